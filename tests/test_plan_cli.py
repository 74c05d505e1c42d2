"""`xinfer-setup plan` through the real CLI: the table, --json (plan v1), CMAKE_ARGS, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provision.backends import names as backend_names
from provision.errors import UserError
from provision.planner import load_recipes
from provision.planner.cmake import translate_user_args

PROFILES = Path(__file__).parent / "profiles"
H100 = str(PROFILES / "linux-h100-driver590.json")


def cli(*args: str, env: dict[str, str] | None = None, cmake_args: str | None = None):
    full = {k: v for k, v in os.environ.items() if k not in ("CMAKE_ARGS", "XINFER_SETUP_TORCH_INDEX_URL")}
    if cmake_args is not None:
        full["CMAKE_ARGS"] = cmake_args
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "provision", "plan", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )


def one_line_error(done, text: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert text in lines[0], lines[0]
    assert done.stdout == ""


def test_json_is_plan_v1():
    done = cli("--auto", "--profile", H100, "--json")
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert d["schema_version"] == 1
    assert d["profile"]["gpus"][0]["compute_capability"] == "9.0"
    assert set(d["torch"]) >= {"variant", "index_url", "reason"}
    assert d["torch"]["variant"] == "cu130"
    # --auto considers every backend of the registry, in its order.
    assert tuple(b["name"] for b in d["backends"]) == backend_names()
    for b in d["backends"]:
        assert set(b) >= {"name", "action", "reason", "packages", "env"}
    llama = next(b for b in d["backends"] if b["name"] == "llama-cpp-python")
    assert llama["env"] == {"CMAKE_ARGS": "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90", "FORCE_CMAKE": "1"}
    assert isinstance(d["warnings"], list)


def test_table_names_every_backend_and_environment():
    done = cli("--auto", "--profile", str(PROFILES / "linux-mixed-3090-1070-driver580.json"))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "torch: cu126 from https://download.pytorch.org/whl/cu126" in out
    for line in (
        "install xinference -> main",
        "install vllm -> vllm",
        "install sglang -> sglang",
        "CMAKE_ARGS: -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=61;86",
        "vllm: vllm (torch cu130==2.14.0)",
    ):
        assert line in out, line
    assert "GTX 1070 (sm_61)" in out


def test_backend_flag_and_env_mirror():
    done = cli(
        "--backend",
        "vllm",
        "--backend",
        "xllamacpp",
        "--profile",
        H100,
        "--json",
        env={"XINFER_SETUP_TORCH_INDEX_URL": "https://mirror.example/whl"},
    )
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert [b["name"] for b in d["backends"]] == ["vllm", "xllamacpp"]
    vllm_env = next(e for e in d["environments"] if e["name"] == "vllm")
    assert vllm_env["torch"]["index_url"] == "https://mirror.example/whl/cu130"


def test_legacy_cmake_args_are_translated_with_a_warning():
    done = cli("--backend", "llama-cpp-python", "--profile", H100, "--json", cmake_args="-DLLAMA_CUBLAS=on")
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    llama = d["backends"][0]
    assert "-DLLAMA_CUBLAS=on" not in llama["build"]["cmake_args"]
    assert llama["build"]["cmake_args"].count("-DGGML_CUDA=on") == 1
    assert any("LLAMA_CUBLAS is a CMake FATAL_ERROR" in w for w in d["warnings"])


def test_user_cmake_args_win_and_change_expected_backends():
    done = cli(
        "--backend",
        "llama-cpp-python",
        "--profile",
        str(PROFILES / "linux-graviton3-cpu.json"),
        "--json",
        cmake_args="-DGGML_VULKAN=on -DGGML_NATIVE=OFF",
    )
    d = json.loads(done.stdout)
    build = d["backends"][0]["build"]
    assert build["cmake_args"] == ["-DGGML_VULKAN=on", "-DGGML_NATIVE=OFF"]
    assert build["expected_backends"] == ["cpu", "vulkan"]


def test_translation_table():
    rec = load_recipes().llama_cpp
    args, warnings = translate_user_args("-DLLAMA_HIPBLAS=on -DGGML_HIPBLAS=ON -DLLAMA_METAL=on", rec)
    assert args == ("-DGGML_HIP=on", "-DGGML_HIP=ON", "-DGGML_METAL=on")
    messages = " ".join(w.message for w in warnings)
    assert "builds CPU-only" in messages and "silently ignored" in messages and "deprecated alias" in messages
    with pytest.raises(UserError, match="CLBlast backend was removed"):
        translate_user_args("-DLLAMA_CLBLAST=on", rec)
    with pytest.raises(UserError, match="not a -DNAME=VALUE option"):
        translate_user_args("-G Ninja", rec)


# ---------------------------------------------------------------- bad input


def test_neither_auto_nor_backend():
    one_line_error(cli("--profile", H100), "--auto")


def test_auto_with_backend_contradicts():
    one_line_error(cli("--auto", "--backend", "vllm", "--profile", H100), "contradict")


def test_unknown_backend():
    one_line_error(cli("--backend", "tensorrt", "--profile", H100), "unknown backend 'tensorrt'")


def test_untranslatable_cmake_args():
    one_line_error(
        cli("--auto", "--profile", H100, cmake_args="-DLLAMA_KOMPUTE=on"), "Kompute backend was removed"
    )


def test_unparsable_cmake_args():
    one_line_error(
        cli("--auto", "--profile", H100, cmake_args='-DGGML_CUDA="on'), "CMAKE_ARGS cannot be parsed"
    )


def test_malformed_profile(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1, "os": ')
    one_line_error(cli("--auto", "--profile", str(bad)), "not valid JSON")


def test_incomplete_profile(tmp_path):
    d = json.loads(Path(H100).read_text())
    del d["os"]["machine"]
    bad = tmp_path / "incomplete.json"
    bad.write_text(json.dumps(d))
    one_line_error(cli("--auto", "--profile", str(bad)), "machine")


def test_missing_profile(tmp_path):
    one_line_error(cli("--auto", "--profile", str(tmp_path / "nope.json")), "no such file")


def test_bad_mirror_url():
    one_line_error(
        cli("--auto", "--profile", H100, "--torch-index-url", "mirror.example"), "not an http(s)://"
    )
