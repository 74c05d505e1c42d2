"""The GPU half's decisions and parsers, on recorded inputs: which toolkit a CUDA build takes, where
torch comes from, which hosts can install for a target, and what a GPU library's bytes say."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from provision.install.gpu_libs import ElfFacts, glibc_max, parse_cuobjdump, unresolved
from provision.install.target import target_mismatches
from provision.install.torch_source import PypiDefault, pypi_default_build, resolve_torch_source
from provision.install.verify import Check, EnvExpectation
from provision.install.verify_gpu import defer_if_driver, llama_static_checks, planned_cuda_archs
from provision.install.wheel_rpath import wanted_runpath
from provision.plan import PlanRequest
from provision.planner import load_recipes, make_plan
from provision.planner.toolkit import toolkit_recipes
from provision.profile import load_profile

PROFILES = Path(__file__).parent / "profiles"


def _llama(profile_name: str, **changes):
    profile = load_profile(PROFILES / profile_name)
    if changes:
        profile = dataclasses.replace(profile, toolchain=dataclasses.replace(profile.toolchain, **changes))
    plan = make_plan(profile, PlanRequest(backends=("llama-cpp-python",)), load_recipes())
    return plan.backend("llama-cpp-python")


def test_no_nvcc_on_a_cuda13_driver_takes_the_pypi_toolkit():
    llama = _llama("linux-l40s-driver580.json", nvcc=None, cuda_cublas=None)
    recipe = toolkit_recipes()[0]
    assert llama.build.cuda_toolkit == recipe.nvcc
    assert llama.build.cmake_args == ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=89")
    assert f"nvcc {recipe.nvcc}" in llama.reason and "toolkit from PyPI" in llama.reason
    assert "no nvcc" in llama.reason  # why the host's cannot do it


def test_nvcc_without_cublas_is_completed_from_pypi():
    llama = _llama("linux-l40s-driver580.json", cuda_cublas=False)
    assert llama.build.cuda_toolkit is not None and "cuBLAS" in llama.reason


def test_a_working_host_nvcc_is_used_as_it_is():
    llama = _llama("linux-l40s-driver580.json")
    assert llama.build.cuda_toolkit is None and "toolkit from PyPI" not in llama.reason


def test_below_driver_580_there_is_no_pypi_route_and_the_plan_says_what_to_install():
    # driver 570 runs CUDA 12.8; PyPI's nvcc wheels that are whole compilers are CUDA 13 only.
    llama = _llama("linux-rtx3090-driver570.json", nvcc=None, cuda_cublas=None)
    assert llama.build.cuda_toolkit is None
    assert "-DGGML_CUDA=on" not in llama.build.cmake_args
    assert "install the CUDA toolkit" in llama.reason


def test_the_toolkit_does_not_go_where_its_wheels_do_not_exist():
    # Windows: no nvcc, a CUDA 13 driver, but the PyPI toolkit is planned for Linux only.
    llama = _llama("windows-rtx2080super-driver610.json")
    assert llama.build is None or llama.build.cuda_toolkit is None
    assert "toolkit from PyPI" not in llama.reason


PYPI = (
    PypiDefault("2.15.0", "linux-x86_64", "cu132"),
    PypiDefault("2.14.1", "linux-x86_64", "cu130"),
    PypiDefault("2.14.0", "linux-x86_64", "cu130"),
)


def test_pypi_torch_is_taken_only_where_it_is_the_planned_variant():
    assert pypi_default_build(PYPI, "cu130", "", "linux-x86_64").torch == "2.14.1"
    assert pypi_default_build(PYPI, "cu130", "==2.14.0", "linux-x86_64").torch == "2.14.0"
    assert pypi_default_build(PYPI, "cu132", None, "linux-x86_64").torch == "2.15.0"
    assert pypi_default_build(PYPI, "cu126", None, "linux-x86_64") is None
    assert pypi_default_build(PYPI, "cu130", None, "linux-aarch64") is None


def test_pypi_torch_needs_no_torch_index_at_all():
    def unreachable(_url):
        raise AssertionError("the PyTorch index must not be asked")

    src = resolve_torch_source(
        "cu130",
        "https://download.pytorch.org/whl/cu130",
        "==2.14.0",
        (),
        "cp311",
        "x86_64",
        reachable=unreachable,
        pypi=PYPI,
        platform="linux-x86_64",
    )
    assert src.torch_requirement == "torch==2.14.0" and src.index_url is None and src.from_pypi
    assert "cu130" in src.reason


def _host(**os_changes):
    p = load_profile(PROFILES / "linux-h100-driver590.json")
    return dataclasses.replace(p, os=dataclasses.replace(p.os, **os_changes)) if os_changes else p


def test_target_hosts_that_cannot_run_the_targets_wheels_are_named():
    target = _host()
    assert target_mismatches(target, target) == []
    older = _host(libc="glibc 2.31")
    assert "older than the target's" in target_mismatches(target, older)[0]
    newer = _host(libc="glibc 2.39")
    assert target_mismatches(target, newer) == []
    arm = _host(machine="aarch64")
    assert "the target is x86_64, this host aarch64" in target_mismatches(target, arm)
    py = dataclasses.replace(target, python=dataclasses.replace(target.python, version="3.12.1"))
    assert any("Python 3.11, this host 3.12" in m for m in target_mismatches(target, py))


def test_runpath_keeps_origin_drops_build_host_paths_and_adds_the_environments_runtime():
    rel = "$ORIGIN/../../nvidia/cu13/lib"
    cache = "/root/.cache/xinfer-setup/toolchains/cuda-13.0.88-ab/nvidia/cu13/lib"
    assert wanted_runpath(f"$ORIGIN:{cache}/stubs:{cache}", ["libcudart.so.13", "libcuda.so.1"], rel) == (
        f"$ORIGIN:{rel}"
    )
    assert wanted_runpath("$ORIGIN", ["libggml-base.so", "libc.so.6"], rel) == "$ORIGIN"
    assert wanted_runpath("", ["libcublas.so.13"], rel) == f"$ORIGIN:{rel}"


def test_cuobjdump_listing_and_glibc_versions_parse():
    listing = (
        "ELF file    1: libggml-cuda.1.sm_90.cubin\n"
        "ELF file    2: libggml-cuda.2.sm_90.cubin\n"
        "PTX file    1: libggml-cuda.1.sm_90.ptx\n"
    )
    code = parse_cuobjdump(listing)
    assert code.sass == ("sm_90",) and code.ptx == ("compute_90",)
    assert glibc_max(["GLIBC_2.2.5", "GLIBC_2.34", "GLIBCXX_3.4.29", "GLIBC_2.17"]) == (2, 34)
    assert glibc_max(["CXXABI_1.3"]) is None


def test_needed_cuda_libraries_must_resolve_through_the_run_path(tmp_path):
    lib = tmp_path / "site" / "llama_cpp" / "lib"
    runtime = tmp_path / "site" / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    runtime.mkdir(parents=True)
    (runtime / "libcudart.so.13").write_bytes(b"")
    elf = ElfFacts(
        ("libcudart.so.13", "libcublas.so.13", "libcuda.so.1"),
        ("$ORIGIN", "$ORIGIN/../../nvidia/cu13/lib"),
        None,
    )
    # libcuda.so.1 is the driver's: never looked for in the environment.
    assert unresolved(elf, lib, ("libcudart", "libcublas", "libcuda")) == ["libcublas.so.13"]


EXPECT = EnvExpectation(
    ("llama-cpp-python",),
    "cu130",
    ("sm_90",),
    ("cpu", "cuda"),
    llama_cuda_archs=("sm_90",),
    glibc_floor=(2, 35),
)
STATIC = {
    "lib": "libggml-cuda.so",
    "needed": ["libggml-base.so", "libcudart.so.13", "libcublas.so.13", "libcuda.so.1"],
    "runpath": ["$ORIGIN", "$ORIGIN/../../nvidia/cu13/lib"],
    "unresolved": [],
    "sass": ["sm_90"],
    "ptx": ["compute_90"],
    "code_error": None,
    "glibc_max": [2, 34],
}


def test_static_checks_prove_the_cuda_library_from_its_bytes():
    checks = {c.name: c for c in llama_static_checks(EXPECT, STATIC)}
    assert all(c.ok for c in checks.values()), checks
    assert set(checks) == {
        "libggml-cuda present",
        "GPU code for the planned archs",
        "linked to cudart and cuBLAS in the environment",
        "glibc floor",
    }


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"sass": ["sm_89"]}, "GPU code for the planned archs"),
        ({"unresolved": ["libcublas.so.13"]}, "linked to cudart and cuBLAS in the environment"),
        ({"needed": ["libcudart.so.13"]}, "linked to cudart and cuBLAS in the environment"),
        ({"glibc_max": [2, 38]}, "glibc floor"),
        ({"code_error": "no cuobjdump at hand"}, "GPU code for the planned archs"),
    ],
)
def test_static_checks_fail_on_what_would_break_on_the_gpu_host(change, failing):
    checks = {c.name: c for c in llama_static_checks(EXPECT, {**STATIC, **change})}
    assert not checks[failing].ok
    assert all(c.ok for n, c in checks.items() if n != failing)


def test_only_failures_the_missing_driver_explains_are_deferred():
    facts = {"driver": "libcuda.so.1: cannot open shared object file"}
    no_driver = Check(
        "llama-cpp-python", "import", False, "OSError: libcuda.so.1: cannot open shared object file"
    )
    deferred = defer_if_driver(no_driver, EXPECT, facts)
    assert deferred.ok and deferred.deferred and "driver" in deferred.deferred
    other = Check("llama-cpp-python", "import", False, "ImportError: libcublas.so.13: not found")
    assert defer_if_driver(other, EXPECT, facts) == other  # a real failure stays one
    with_driver = defer_if_driver(no_driver, EXPECT, {"driver": None})
    assert not with_driver.ok and with_driver.deferred is None


def test_planned_archs_read_from_cmake():
    assert planned_cuda_archs(("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=86;90-real")) == (
        "sm_86",
        "sm_90",
    )
    assert planned_cuda_archs(("-DGGML_CUDA=on",)) == ()


def test_one_torch_build_in_two_environments_counts_once_where_uv_hard_links(tmp_path):
    from provision.install.disk import TORCH_GPU_DISK_MB, estimate_disk_mb, same_file_system

    profile = load_profile(PROFILES / "linux-h100-driver590.json")
    plan = make_plan(profile, PlanRequest(), load_recipes())
    todo = [b.name for b in plan.installs]
    # main (PyPI's newest cu130 torch: 2.14.1) and sglang (==2.14.1) share one build; vllm has 2.14.0.
    assert [e.torch.version_spec for e in plan.environments if e.torch] == [None, "==2.14.0", "==2.14.1"]
    copied = estimate_disk_mb(plan, todo)
    linked = estimate_disk_mb(plan, todo, shared_builds=True)
    assert copied - linked == TORCH_GPU_DISK_MB
    assert same_file_system(tmp_path, tmp_path / "not" / "yet")
