"""The GPU half, installed and built for real on this GPU-less host: `install --profile` for an H100
box with driver 580 and no nvcc, whose OS, glibc and Python are this host's.

What runs for real: CUDA torch from PyPI (its default Linux wheel is the cu130 build), vLLM's and
SGLang's own environments with their torch pins, and llama-cpp-python compiled with GGML_CUDA for
sm_90 with the CUDA 13 toolkit made of PyPI wheels (recipes/cuda_toolkit.toml). What is faked: the
target's GPU and driver, from recorded profiles (an H100 from an NVML capture, driver 580.126.09
from an L40S host's), at the profile layer the planner reads.

REDUCED BUILD: when the wheelhouse has no wheel for this key, the CUDA build is compiled with
CMAKE_ARGS=-DGGML_CUDA_FA=OFF (the flash-attention kernels become stubs), one arch: the smallest
configuration that still proves the wiring (toolkit, compiler, link, run path, SASS). A full build
for one arch is about 63 CPU-minutes here; the reduced one, measured, is in the README. The wheel is
kept in the user's wheelhouse like the CPU build's, so later runs reuse it.

The root (about 14 GB of environments, most of it hard links into uv's cache) is removed at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.cli import cli
from tests.support.gpu_target import REDUCED_CMAKE_ARGS, target_from

REDUCED = {"CMAKE_ARGS": REDUCED_CMAKE_ARGS}
GPU_BACKENDS = ("xinference", "transformers", "vllm", "sglang", "llama-cpp-python")


@pytest.fixture(scope="module")
def target_file(tmp_path_factory) -> Path:
    probe = cli("probe", "--json")
    assert probe.returncode == 0, probe.stderr
    path = tmp_path_factory.mktemp("target") / "h100-driver580.json"
    path.write_text(json.dumps(target_from(json.loads(probe.stdout))))
    return path


@pytest.fixture(scope="module")
def gpu_root(tmp_path_factory, target_file):
    root = tmp_path_factory.mktemp("gpu") / "envs"
    args = ["install", "--profile", str(target_file), "--venv", str(root), "--json"]
    for b in GPU_BACKENDS:
        args += ["--backend", b]
    started = time.monotonic()
    done = cli(*args, env=REDUCED, timeout=5400)
    took = time.monotonic() - started
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr[-5000:]}"
    sizes = {p.name: _du(p) for p in sorted(root.iterdir()) if p.is_dir()}
    print(f"\ninstall --profile (GPU target) took {took:.0f} s; environments (MB, du): {sizes}")
    yield root, json.loads(done.stdout), done.stderr
    shutil.rmtree(root, ignore_errors=True)  # GPU roots are large: nothing stays behind


def _du(path: Path) -> int:
    out = subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 else -1


def _checks(receipt: dict, backend: str) -> dict[str, dict]:
    rec = next(b for b in receipt["backends"] if b["name"] == backend)
    return {c["name"]: c for c in rec["verify"]}


@pytest.mark.slow
def test_cuda_torch_comes_from_pypi_and_each_engine_keeps_its_pin(gpu_root):
    _, receipt, stderr = gpu_root
    envs = {e["name"]: e for e in receipt["environments"]}
    assert set(envs) == {"main", "vllm", "sglang"}
    for name, version in (("main", "2.14.1"), ("vllm", "2.14.0"), ("sglang", "2.14.1")):
        torch = envs[name]["torch"]
        assert torch["source"] == "PyPI" and torch["version"] == version, torch
        assert f"torch=={version}" in envs[name]["packages"]
    assert "download.pytorch.org" not in stderr  # no PyTorch index needed, none asked
    for backend in ("xinference", "vllm", "sglang"):
        checks = _checks(receipt, backend)
        assert checks["torch variant"]["ok"] and "cu130" in checks["torch variant"]["detail"]
        assert checks["torch covers sm_90"]["ok"]  # the compiled arch list, read without a GPU
    installed = {b["name"]: b["version"] for b in receipt["backends"] if b["status"] == "installed"}
    assert installed.items() >= {"vllm": "0.33.0", "sglang": "0.5.23"}.items(), installed


@pytest.mark.slow
def test_the_receipt_records_the_target_and_the_host_it_was_built_on(gpu_root, target_file):
    _, receipt, _ = gpu_root
    assert receipt["profile"]["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3"
    assert receipt["built_on"] is not None and receipt["built_on"]["gpus"] == []
    assert receipt["ok"] is True


@pytest.mark.slow
def test_llama_cpp_is_a_cuda_build_for_sm_90_linked_to_the_environments_runtime(gpu_root):
    root, receipt, _ = gpu_root
    llama = next(b for b in receipt["backends"] if b["name"] == "llama-cpp-python")
    assert llama["status"] == "installed"
    assert "-DGGML_CUDA=on" in llama["cmake_args"] and "-DCMAKE_CUDA_ARCHITECTURES=90" in llama["cmake_args"]
    checks = _checks(receipt, "llama-cpp-python")
    code = checks["GPU code for the planned archs"]
    assert code["ok"] and "SASS sm_90" in code["detail"], code
    linked = checks["linked to cudart and cuBLAS in the environment"]
    assert linked["ok"] and "libcudart.so.13" in linked["detail"] and "libcublas.so.13" in linked["detail"]
    assert "$ORIGIN/../../nvidia/cu13/lib" in linked["detail"]
    assert "toolchains" not in linked["detail"]  # no build-host path left on the run path
    assert checks["glibc floor"]["ok"]
    # The wheelhouse entry says which toolkit built it.
    wheel = Path(llama["source"].removeprefix("file://"))
    build = json.loads((wheel.parent / "build.json").read_text())
    assert build["cuda_toolkit"]["source"] == "pypi" and build["backends"] == ["cpu", "cuda"]
    lib = next((root / "main").glob("lib/python3*/site-packages/llama_cpp/lib/libggml-cuda.so"))
    assert lib.is_file()


@pytest.mark.slow
def test_verify_lists_what_it_proved_and_what_waits_for_a_gpu_host(gpu_root):
    root, receipt, _ = gpu_root
    deferred = {(b["name"], c["name"]) for b in receipt["backends"] for c in b["verify"] if c.get("deferred")}
    # Loading llama.cpp's CUDA library, vLLM's and SGLang's kernels, and torch reaching the GPU
    # need libcuda.so.1: deferred by name, not failed and not claimed.
    assert ("llama-cpp-python", "llama.cpp backends") in deferred
    assert ("vllm", "native extensions load") in deferred
    assert ("sglang", "native extensions load") in deferred
    assert ("xinference", "torch sees the 1 planned GPU model(s)") in deferred
    done = cli("verify", "--venv", str(root))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(ln.startswith("DEFERRED llama-cpp-python: llama.cpp backends") for ln in lines)
    assert any(ln.startswith("ok   llama-cpp-python: GPU code for the planned archs") for ln in lines)
    assert any(ln.startswith("ok   vllm: import") for ln in lines)
    status = cli("status", "--venv", str(root))
    assert status.returncode == 0, status.stderr
    assert "deferred  llama-cpp-python: llama.cpp backends (waits for a GPU host" in status.stdout


@pytest.mark.slow
def test_an_unreachable_gpu_index_fails_naming_it(gpu_root, target_file):
    root, _, _ = gpu_root
    done = cli("install", "--profile", str(target_file), "--venv", str(root), "--backend", "xllamacpp")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "its index https://xorbitsai.github.io/xllamacpp/whl/cu128 cannot be reached" in last
    # The others are untouched.
    status = cli("status", "--venv", str(root))
    assert "llama-cpp-python" in status.stdout


@pytest.mark.slow
def test_a_bundle_for_the_target_carries_the_cuda_build_made_here(gpu_root, target_file, tmp_path):
    done = cli(
        "bundle",
        "--profile",
        str(target_file),
        "-o",
        str(tmp_path / "b"),
        "--backend",
        "llama-cpp-python",
        "--dry-run",
        "--json",
        env=REDUCED,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert "llama-cpp-python" in report["built"], report["notes"]
    # The target's install keys the wheel by the host that built it (recorded in the manifest).
    assert report["built_on"]["gpus"] == [] and report["built_on"]["os"]["libc"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"python": {"version": "3.12.7", "implementation": "cpython"}}, "Python 3.12"),
        ({"os": {"machine": "aarch64"}}, "the target is aarch64"),
        ({"os": {"libc": "glibc 2.99"}}, "older than the target's 2.99"),
    ],
)
def test_a_target_this_host_cannot_serve_exits_2_in_one_line(target_file, tmp_path, change, says):
    target = json.loads(target_file.read_text())
    for key, value in change.items():
        target[key] = {**target[key], **value}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(target))
    root = tmp_path / "envs"
    done = cli("install", "--profile", str(bad), "--venv", str(root), "--backend", "vllm")
    assert done.returncode == 2
    assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not root.exists()  # nothing was created
