"""Judging an environment's facts against the plan (facts recorded from real environments here)."""

from __future__ import annotations

import json
from pathlib import Path

from provision.install.verify import EnvExpectation, arch_covered, evaluate, torch_variant_of

FIX = Path(__file__).parent / "fixtures" / "install"
ALL = ("transformers", "llama-cpp-python", "xllamacpp")

# torch.cuda.get_arch_list() of the PyTorch cu126 and cu128 Linux wheels (torch 2.7).
CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
CU128 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


def _facts(name: str) -> dict:
    return json.loads((FIX / name).read_text())


def _failed(checks):
    return {(c.backend, c.name): c.detail for c in checks if not c.ok}


def test_the_provisioned_cpu_env_passes():
    checks = evaluate(EnvExpectation(ALL, "cpu", (), ("cpu",)), _facts("facts-cpu-ok.json"))
    assert not _failed(checks)
    assert {c.name for c in checks} >= {"import", "torch variant", "llama.cpp backends"}


def test_pypi_torchvision_beside_cpu_torch_is_caught():
    """Recorded here: torchvision 0.28.0 from PyPI next to torch 2.13.0+cpu."""
    failed = _failed(
        evaluate(EnvExpectation(ALL, "cpu", (), ("cpu",)), _facts("facts-cpu-pypi-torchvision.json"))
    )
    assert "torchvision::nms does not exist" in failed[("torch", "torchvision matches torch")]
    assert "Could not import module 'LlamaConfig'" in failed[("transformers", "import")]


def test_a_cuda_build_that_came_out_cpu_only_fails():
    failed = _failed(
        evaluate(
            EnvExpectation(("llama-cpp-python",), "cpu", (), ("cpu", "cuda")), _facts("facts-cpu-ok.json")
        )
    )
    assert "missing cuda" in failed[("llama-cpp-python", "llama.cpp backends")]


def test_wrong_torch_variant_fails():
    failed = _failed(evaluate(EnvExpectation(("transformers",), "cu126"), _facts("facts-cpu-ok.json")))
    assert "the plan wants cu126" in failed[("torch", "torch variant")]


def test_variant_of_tagged_and_untagged_builds():
    assert torch_variant_of("2.13.0+cpu", None, None) == "cpu"
    assert torch_variant_of("2.9.1+cu128", "12.8", None) == "cu128"
    assert torch_variant_of("2.11.0", "13.0", None) == "cu130"
    assert torch_variant_of("2.5.1+rocm6.2", None, "6.2.41133-dd7f95766") == "rocm6.2"
    assert torch_variant_of("2.8.0", None, "6.4.43482") == "rocm6.4"


def test_arch_coverage():
    assert arch_covered("sm_90", CU126)
    assert not arch_covered("sm_120", CU126)  # RTX 50xx on a cu126 wheel
    assert arch_covered("sm_120", CU128)
    assert not arch_covered("sm_61", CU128)  # Pascal left out of cu128
    assert arch_covered("sm_121", CU128)  # PTX of the same major JITs


def test_gpu_coverage_reported_per_arch():
    facts = _facts("facts-cpu-ok.json")
    facts["torch"] = {"version": "2.7.0+cu126", "cuda": "12.6", "hip": None, "arch_list": CU126}
    failed = _failed(evaluate(EnvExpectation(("transformers",), "cu126", ("sm_86", "sm_120")), facts))
    assert list(failed) == [("torch", "torch covers sm_120")]


def test_environment_that_cannot_run_fails_every_backend():
    checks = evaluate(EnvExpectation(("transformers", "xllamacpp"), "cpu"), {"error": "cannot run /x: gone"})
    assert [c.ok for c in checks] == [False, False]


def test_gpu_archs_follow_the_torch_variant():
    from provision.install.verify import gpu_archs
    from provision.profile import load_profile

    profiles = Path(__file__).parent / "profiles"
    mixed = load_profile(profiles / "linux-mixed-3090-1070-driver580.json")
    assert gpu_archs(mixed, "cu126") == ("sm_86", "sm_61")
    assert gpu_archs(mixed, "cpu") == gpu_archs(mixed, None) == ()
    assert gpu_archs(load_profile(profiles / "linux-mi300x-rocm6.3.json"), "rocm7.1") == ("gfx942",)


# ---- verify by function: what ggml registers and what xllamacpp loads (recorded here, then varied
# at the layer this machine cannot produce: a GPU build's registry names and loaded libraries).


def test_llama_backends_come_from_ggmls_registry_not_file_names():
    facts = _facts("facts-cpu-registry.json")  # collect_facts on a real CPU env here: ggml says ["CPU"]
    assert facts["llama_cpp_backends"] == ["CPU"]
    ok = evaluate(EnvExpectation(ALL, "cpu", (), ("cpu",), "cpu"), facts)
    assert not _failed(ok)
    # A libggml-cuda.so file next to a library that registers only CPU is a CPU build.
    facts["llama_cpp_libs"] = [*facts["llama_cpp_libs"], "lib/libggml-cuda.so"]
    failed = _failed(evaluate(EnvExpectation(ALL, "cpu", (), ("cuda",)), facts))
    assert failed[("llama-cpp-python", "llama.cpp backends")] == "ggml registers CPU; missing cuda"
    facts["llama_cpp_backends"] = ["CUDA", "CPU"]
    assert not _failed(evaluate(EnvExpectation(ALL, "cpu", (), ("cuda",)), facts))
    facts["llama_cpp_backends"] = ["ROCm", "CPU"]  # ggml's name for its HIP backend
    assert not _failed(evaluate(EnvExpectation(ALL, "cpu", (), ("hip",)), facts))
    facts["llama_cpp_backends"] = {"error": "OSError: libcudart.so.12: cannot open shared object file"}
    failed = _failed(evaluate(EnvExpectation(ALL, "cpu", (), ("cuda",)), facts))
    assert "libcudart.so.12" in failed[("llama-cpp-python", "llama.cpp backends")]


def test_xllamacpp_cpu_and_gpu_builds_are_told_apart_by_what_they_load():
    facts = _facts("facts-cpu-registry.json")
    assert not _failed(evaluate(EnvExpectation(ALL, "cpu", (), ("cpu",), "cpu"), facts))
    failed = _failed(evaluate(EnvExpectation(ALL, "cpu", (), ("cpu",), "cuda"), facts))
    assert "the plan wants the cuda build" in failed[("xllamacpp", "xllamacpp build")]
    facts["xllamacpp_libs"] = ["libcudart.so.12", "libcublas.so.12", "libcuda.so.1"]
    assert not _failed(evaluate(EnvExpectation(ALL, "cpu", (), ("cpu",), "cuda"), facts))
    failed = _failed(evaluate(EnvExpectation(ALL, "cpu", (), ("cpu",), "cpu"), facts))
    assert "a cuda build" in failed[("xllamacpp", "xllamacpp build")]
