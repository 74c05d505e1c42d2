"""Issue 20's known-failure hosts, planned from recorded or realistic profiles (tests/profiles/):
the decision (torch variant and index, each backend's action, the warning codes) and the facts
the reasons carry, read from recipes/host_classes.toml rather than typed here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from provision.plan import PlanRequest
from provision.planner import load_recipes, make_plan
from provision.planner.host_classes import load_host_classes
from provision.planner.runtime_env import runtime_env
from provision.profile import GPU, PlatformInfo, Tegra, load_profile

PROFILES = Path(__file__).parent / "profiles" / "classes"  # one per issue-20 class; the matrix has the rest
HOST = load_host_classes()


def plan_of(name: str, profile=None):
    return make_plan(profile or load_profile(PROFILES / f"{name}.json"), PlanRequest(), load_recipes())


def codes(plan) -> set[str]:
    return {w.code for w in plan.warnings}


# ---------------------------------------------------------------- class 6: Rosetta


@pytest.mark.parametrize("name", ["macos-m1pro-rosetta-x86python", "macos-m1pro-rosetta-v1"])
def test_rosetta_is_refused_naming_the_arm64_python(name):
    plan = plan_of(name)
    assert plan.installs == ()
    assert "rosetta" in codes(plan)
    hint = HOST.rosetta_python_hint.format(minor="3.11")
    for b in plan.backends:
        assert "Rosetta 2" in b.reason and hint in b.reason, b
    assert plan.torch.variant == "cpu" and "Intel Mac" not in plan.torch.reason


def test_a_real_intel_mac_is_not_taken_for_rosetta():
    plan = plan_of("", load_profile(PROFILES.parent / "macos-intel-i5.json"))
    assert "rosetta" not in codes(plan)
    assert plan.installs  # the Intel Mac keeps its own plan


# ---------------------------------------------------------------- class 16: Jetson


def _jetpack(l4t_major: str):
    return next(r for r in HOST.jetson_releases if r.l4t == l4t_major)


@pytest.mark.parametrize("name", ["linux-jetson-orin-jp6", "linux-jetson-agx-orin-v1-kernel-only"])
def test_jetson_gets_its_jetpack_torch_never_the_sbsa_one(name):
    plan = plan_of(name)
    jp6 = _jetpack("36")
    assert (plan.torch.variant, plan.torch.index_url) == (jp6.torch_variant, jp6.torch_index)
    assert "download.pytorch.org" not in (plan.torch.index_url or "")
    assert f"JetPack {jp6.jetpack}" in plan.torch.reason
    for engine in HOST.jetson_skip_engines:
        d = plan.backend(engine)
        assert d.action == "skip" and "JetPack" in d.reason and HOST.jetson_containers in d.reason
    xl = plan.backend("xllamacpp")
    assert xl.extra_index_urls == ()  # the aarch64 CUDA wheels are SBSA builds
    for env in plan.environments:
        assert env.torch is None or "download.pytorch.org" not in (env.torch.index_url or "")


def test_jetpack5_is_refused_with_the_advice():
    plan = plan_of("linux-jetson-xavier-jp5")
    assert plan.torch.variant == "cpu" and plan.torch.index_url is None
    assert "jetson-no-torch-index" in codes(plan)
    assert f"JetPack {_jetpack('35').jetpack}" in plan.torch.reason


def test_jetpack7_thor_is_mapped_from_its_kernel_alone():
    """Beyond the fixtures: a Thor (kernel 6.8-tegra) with no nv_tegra_release in a container."""
    base = load_profile(PROFILES / "linux-jetson-agx-orin-v1-kernel-only.json")
    thor = dataclasses.replace(
        base,
        os=dataclasses.replace(base.os, release="6.8.12-tegra"),
        gpus=(GPU("nvidia", "NVIDIA Thor", None, "11.0", index=0),),
    )
    plan = plan_of("", thor)
    assert plan.torch.index_url == _jetpack("38").torch_index


def test_unknown_jetpack_is_refused_not_guessed():
    base = load_profile(PROFILES / "linux-jetson-orin-jp6.json")
    odd = dataclasses.replace(base, platform=PlatformInfo(tegra=Tegra("99.1.0", None)))
    plan = plan_of("", odd)
    assert plan.torch.variant == "cpu" and "JetPack unknown" in plan.torch.reason


# ---------------------------------------------------------------- class 5: RDNA2 without rocBLAS kernels


def test_gfx1031_gets_gfx1030_code_and_the_override():
    plan = plan_of("linux-rx6700xt-gfx1031-rocm6.4")
    assert plan.profile.amd_gpus[0].gfx == "gfx1031"  # the plan keeps the real profile
    assert plan.torch.variant == load_recipes().torch.rocm_variant  # not CPU: gfx1030 kernels run
    assert plan.torch.covers == (HOST.override_as_gfx,)
    llama = plan.backend("llama-cpp-python")
    assert f"-DGPU_TARGETS={HOST.override_as_gfx}" in llama.build.cmake_args
    assert "rocm-gfx-override" in codes(plan)
    w = next(w for w in plan.warnings if w.code == "rocm-gfx-override")
    assert f"HSA_OVERRIDE_GFX_VERSION={HOST.hsa_override}" in w.message
    assert runtime_env(plan.profile, {}) == {"HSA_OVERRIDE_GFX_VERSION": HOST.hsa_override}


@pytest.mark.parametrize("gfx", ["gfx1032", "gfx1034", "gfx1035", "gfx1036"])
def test_every_rdna2_target_without_kernels_is_planned_alike(gfx):
    base = load_profile(PROFILES / "linux-rx6700xt-gfx1031-rocm6.4.json")
    card = dataclasses.replace(base, gpus=(dataclasses.replace(base.gpus[0], gfx=gfx),))
    plan = plan_of("", card)
    assert f"-DGPU_TARGETS={HOST.override_as_gfx}" in plan.backend("llama-cpp-python").build.cmake_args
    assert runtime_env(card, {})["HSA_OVERRIDE_GFX_VERSION"] == HOST.hsa_override


def test_override_is_not_set_beside_a_gpu_it_would_misreport():
    plan = plan_of("linux-rx6600-plus-rx7900xtx-rocm6.4")
    assert "rocm-gfx-override-mixed" in codes(plan) and "rocm-gfx-override" not in codes(plan)
    assert "HSA_OVERRIDE_GFX_VERSION" not in runtime_env(plan.profile, {})


def test_a_users_own_override_is_kept():
    profile = load_profile(PROFILES / "linux-rx6700xt-gfx1031-rocm6.4.json")
    assert runtime_env(profile, {"HSA_OVERRIDE_GFX_VERSION": "10.3.1"}) == {}


# ---------------------------------------------------------------- class 15: WSL2


def test_wsl_puts_its_libcuda_first_on_the_library_path():
    plan = plan_of("linux-wsl2-rtx3070-driver531")
    assert "wsl-libcuda" in codes(plan)
    env = runtime_env(plan.profile, {"LD_LIBRARY_PATH": "/opt/x"})
    assert env == {"LD_LIBRARY_PATH": f"{HOST.wsl_lib_dir}:/opt/x"}
    assert runtime_env(plan.profile, {"LD_LIBRARY_PATH": HOST.wsl_lib_dir}) == {}
    assert runtime_env(load_profile(PROFILES.parent / "linux-h100-driver590.json"), {}) == {}


# ---------------------------------------------------------------- class 19: NVML errors, vGPU


def test_nvml_error_plans_the_gpu_and_says_what_failed():
    plan = plan_of("linux-container-nvml-unknown-error-a100")
    assert plan.torch.variant.startswith("cu")  # the GPU is planned for, not "no GPU"
    w = next(w for w in plan.warnings if w.code == "nvml-error")
    assert "Unknown Error" in w.message and "not a host without GPUs" in w.message


def test_vgpu_and_mig_are_said():
    base = load_profile(PROFILES.parent / "linux-h100-driver590.json")
    both = dataclasses.replace(base, platform=PlatformInfo(gpu_virtualization=("mig", "vgpu")))
    assert {"nvidia-mig", "nvidia-vgpu"} <= codes(plan_of("", both))


# ---------------------------------------------------------------- serve gets the runtime variables


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("linux-rx6700xt-gfx1031-rocm6.4", "HSA_OVERRIDE_GFX_VERSION", HOST.hsa_override),
        ("linux-wsl2-rtx3070-driver531", "LD_LIBRARY_PATH", HOST.wsl_lib_dir),
    ],
)
def test_serve_puts_the_runtime_variables_into_the_engines_environment(name, key, value):
    import json

    from tests.support.cli import cli

    done = cli("serve", "tiny", "--dry-run", "--json", "--profile", str(PROFILES / f"{name}.json"))
    assert done.returncode == 0, done.stderr
    env = json.loads(done.stdout)["env"]
    assert env[key].split(":")[0] == value


# ---------------------------------------------------------------- the classes the planner already answered


def test_vllm_and_sglang_off_linux_get_the_advice_for_that_system():
    """Class 7 (vllm-project/vllm#3425, xorbitsai/inference#2990)."""
    windows = plan_of("", load_profile(PROFILES.parent / "windows-rtx2080super-driver610.json"))
    mac = plan_of("", load_profile(PROFILES.parent / "macos-m1max.json"))
    for engine in ("vllm", "sglang"):
        assert windows.backend(engine).action == "skip" and "WSL2" in windows.backend(engine).reason
        assert mac.backend(engine).action == "skip" and "MLX" in mac.backend(engine).reason
        assert "WSL2" not in mac.backend(engine).reason
    assert "mlx" in mac.backend("xinference").packages[0]  # the MLX route is planned, not only named


def test_flashinfer_jit_without_nvcc_is_said_with_the_cache_index():
    """Class 14: SGLang's FlashInfer JIT needs nvcc (sgl-project/sglang#5002, #3830, #5389)."""
    base = load_profile(PROFILES.parent / "linux-h100-driver590.json")
    assert "flashinfer-jit-nvcc" not in codes(plan_of("", base))  # nvcc 13.0 is there
    bare = dataclasses.replace(base, toolchain=dataclasses.replace(base.toolchain, nvcc=None))
    plan = plan_of("", bare)
    said = [w.message for w in plan.warnings if w.code == "flashinfer-jit-nvcc"]
    assert {m.split(":")[0] for m in said} == {
        b for b in HOST.flashinfer_engines if plan.backend(b).action == "install"
    }
    sglang_torch = plan.environment(plan.backend("sglang").environment).torch.variant
    assert any(HOST.flashinfer_jit_cache_index.format(variant=sglang_torch) in m for m in said)


def test_windows_without_build_tools_keeps_the_prebuilt_wheels():
    """Class 12 (xorbitsai/inference#1050, #1393): no source build without a compiler; wheels stay."""
    profile = load_profile(PROFILES.parent / "windows-rtx2080super-driver610.json")
    plan = plan_of(
        "", dataclasses.replace(profile, toolchain=dataclasses.replace(profile.toolchain, cc=None))
    )
    llama = plan.backend("llama-cpp-python")
    assert llama.action == "skip" and "Visual Studio Build Tools" in llama.reason
    assert plan.backend("xllamacpp").action == "install"  # a prebuilt wheel needs no compiler


def test_install_refuses_a_rosetta_host_as_a_whole():
    """`install` raises the refusal (exit 2) before touching anything; --profile cannot reach it
    (another machine's profile is --dry-run only), so the link is asserted on the plan's codes."""
    from provision.commands.install import REFUSING_WARNINGS

    assert codes(plan_of("macos-m1pro-rosetta-v1")) & set(REFUSING_WARNINGS)
    assert not codes(plan_of("linux-jetson-orin-jp6")) & set(REFUSING_WARNINGS)
