"""The llama-cpp-python wheelhouse: what the key depends on, and what a build contains."""

from __future__ import annotations

import zipfile
from pathlib import Path

from provision.install.progress import build_progress
from provision.install.wheelhouse import (
    BuildRequest,
    backends_in_names,
    built_wheel,
    isa_features,
    wheel_backends,
)
from provision.planner.cmake import effective_args

FIX = Path(__file__).parent / "fixtures" / "install"
CPU_FLAGS = ("fpu", "sse4_2", "avx", "avx2", "fma", "f16c", "ht", "avx512f")


def _req(args=(), flags=CPU_FLAGS, backends=("cpu",)) -> BuildRequest:
    return BuildRequest("0.3.36", tuple(args), backends, isa_features(flags), "x86_64")


def test_key_follows_cmake_args_not_pip_cache_rules():
    cpu, cuda = _req(), _req(["-DGGML_CUDA=on"])
    assert cpu.key != cuda.key  # what pip's wheel cache gets wrong
    assert cpu.key.startswith("0.3.36-")
    assert _req(["-DGGML_CUDA=off", "-DGGML_CUDA=on"]).key == cuda.key  # last value wins, as in CMake


def test_native_builds_depend_on_cpu_features_portable_ones_do_not():
    assert _req().key != _req(flags=("avx", "avx2")).key
    assert _req().key == _req(flags=CPU_FLAGS + ("ht", "lm")).key  # non-ISA flags do not matter
    portable = ["-DGGML_NATIVE=OFF", "-DGGML_CPU_ALL_VARIANTS=ON", "-DGGML_BACKEND_DL=ON"]
    assert not _req(portable).native
    assert _req(portable).key == _req(portable, flags=("avx",)).key


def test_effective_args_keep_last_value_per_variable():
    assert effective_args(("-DGGML_CUDA=off", "-GNinja", "-DGGML_CUDA:BOOL=on")) == (
        "-GNinja",
        "-DGGML_CUDA:BOOL=on",
    )


def test_backends_of_the_real_cpu_wheel_listing():
    names = (FIX / "llama-cpp-python-0.3.36-cpu-wheel-libs.txt").read_text().split()
    assert backends_in_names(names) == {"cpu"}
    portable = ["llama_cpp/lib/libggml-cpu-haswell.so", "llama_cpp/lib/libggml-cpu-sapphirerapids.so"]
    assert backends_in_names(portable + ["llama_cpp/lib/libggml-cuda.so"]) == {"cpu", "cuda"}


def test_wheel_backends_reads_the_zip_and_wheelhouse_lookup(tmp_path):
    key = _req().key
    d = tmp_path / "wheelhouse" / key
    d.mkdir(parents=True)
    wheel = d / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for n in (FIX / "llama-cpp-python-0.3.36-cpu-wheel-libs.txt").read_text().split():
            zf.writestr(n, b"")
    assert wheel_backends(wheel) == {"cpu"}
    assert built_wheel(key, tmp_path) == wheel
    assert built_wheel(_req(["-DGGML_CUDA=on"]).key, tmp_path) is None


def test_build_progress_from_cmake_and_ninja_lines():
    assert build_progress("[ 45%] Building CXX object vendor/llama.cpp/ggml/src/ggml.c.o") == 45
    assert build_progress("  [87/174] Building CXX object vendor/llama.cpp/src/llama.cpp.o") == 50
    assert build_progress("-- Configuring done") is None


def test_the_plan_and_the_wheelhouse_key_use_one_cmake_rule():
    """A later value of a variable wins, first-seen order, other arguments first; the key of a
    build request is that of its effective arguments, however they were spelled."""
    args = ("-DGGML_CUDA=off", "-DGGML_NATIVE=OFF", "-GNinja", "-DGGML_CUDA=on")
    assert effective_args(args) == ("-GNinja", "-DGGML_CUDA=on", "-DGGML_NATIVE=OFF")
    assert effective_args(effective_args(args)) == effective_args(args)
    assert _req(list(args)).key == _req(list(effective_args(args))).key
