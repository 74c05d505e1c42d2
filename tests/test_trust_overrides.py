"""Overrides that mean something: the CUDA llama.cpp build gets the planned nvcc (CUDACXX/PATH),
and the GPU overrides plan a GPU-less container build for its target (CLI, real planner)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from provision.install.wheelhouse import BuildFailed, BuildRequest, cuda_build_env
from tests.support.cli import cli

RAW = Path(__file__).parent / "fixtures" / "raw"


def _fake_cuda_home(tmp_path: Path, recorded: str) -> Path:
    """A toolkit directory whose nvcc prints a `nvcc --version` recorded on a real machine."""
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\ncat '{RAW / recorded}'\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return home


def _req(args: tuple[str, ...], nvcc: str | None = "13.0") -> BuildRequest:
    return BuildRequest("0.3.36", args, ("cuda",), (), "x86_64", nvcc_version=nvcc)


def test_cuda_build_gets_cudacxx_and_path_for_the_planned_nvcc(tmp_path):
    home = _fake_cuda_home(tmp_path, "nvcc-version__cuda13.0.48-linux.txt")
    env = cuda_build_env(_req(("-DGGML_CUDA=on",)), {"CUDA_HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert env["CUDACXX"] == str(home / "bin" / "nvcc")
    assert env["PATH"].split(os.pathsep)[0] == str(home / "bin")
    assert env["CUDAToolkit_ROOT"] == str(home)


def test_cpu_build_gets_nothing_and_a_missing_or_other_nvcc_is_a_clear_failure(tmp_path):
    assert cuda_build_env(_req(()), {"PATH": "/usr/bin"}) == {}
    with pytest.raises(BuildFailed, match="no nvcc is on PATH"):
        cuda_build_env(_req(("-DGGML_CUDA=ON",)), {"PATH": str(tmp_path)}, root=tmp_path)
    home = _fake_cuda_home(tmp_path, "nvcc-version__cuda12.5.82-wsl2.txt")
    with pytest.raises(BuildFailed, match=r"made for nvcc 13.0, but .* is 12.5"):
        cuda_build_env(_req(("-DGGML_CUDA=on",)), {"CUDA_HOME": str(home), "PATH": "/usr/bin"})


def test_container_build_plans_for_its_target_gpus(tmp_path):
    env = {"XINFER_SETUP_CUDA_DRIVER_VERSION": "580.65.06", "XINFER_SETUP_CUDA_ARCH": "8.0,9.0"}
    done = cli("plan", "--auto", "--json", env=env)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["torch"]["variant"].startswith("cu")
    assert "sm_80" in plan["torch"]["reason"] and "sm_90" in plan["torch"]["reason"]
    bad = cli("plan", "--auto", env={"XINFER_SETUP_CUDA_ARCH": "ampere"})
    assert bad.returncode == 2 and bad.stderr.startswith("xinfer-setup: XINFER_SETUP_CUDA_ARCH=")
