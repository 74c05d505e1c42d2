"""The fixture matrix: real-world host profiles (tests/profiles/) and the decisions each must get.

Each row: torch variant (and pin), the action of every backend, the reasons a person acts on,
llama-cpp-python's CMake args, and the environments. Device names, drivers and capabilities
follow real captures (nvidia-smi/NVML, rocminfo, sysctl) listed in tests/fixtures/raw/SOURCES.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.backends import registry
from provision.plan import BACKENDS, PlanRequest
from provision.planner import load_recipes, make_plan
from provision.profile import load_profile

PROFILES = Path(__file__).parent / "profiles"


def row(torch, skips=None, cmake=None, envs=("main",), reasons=None, warnings=(), spec=None):
    """skips: backend -> text its skip reason must contain ("" for any); every other backend installs.
    reasons: backend (or "torch") -> text an install reason (or the torch reason) must contain."""
    return dict(
        torch=torch,
        spec=spec,
        skips=dict(skips or {}),
        cmake=cmake,
        envs=envs,
        reasons=reasons or {},
        warnings=warnings,
    )


def no_gpu_engines(vllm="", sglang=""):
    return {"vllm": vllm, "sglang": sglang}


GPU_ENVS = ("main", "vllm", "sglang")

EXPECTED = {
    # Pascal, datacenter: cu126 is the only torch build with sm_60; vLLM needs 7.5.
    "linux-p100-driver535": row(
        "cu126",
        no_gpu_engines(vllm="needs compute capability >= 7.5"),
        ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=60"),
        reasons={"torch": "sm_60"},
    ),
    # Pascal on a NEW driver: still cu126 (cu13x has no sm_61).
    "linux-tesla-p4-driver580": row(
        "cu126",
        no_gpu_engines(vllm="Tesla P4 (sm_61)", sglang="compute capability >= 7.5"),
        ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=61"),
    ),
    # Volta on driver 515: no current CUDA torch at all.
    "linux-titan-v-driver515": row(
        "cpu",
        no_gpu_engines(vllm="TITAN V (sm_70)"),
        (),
        warnings=("nvidia-driver-too-old",),
        reasons={"torch": "older than 525.60.13", "llama-cpp-python": "no nvcc"},
    ),
    "linux-t4-driver580": row("cu130", {}, ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=75"), GPU_ENVS),
    # Turing consumer, driver 610 without nvcc: the driver runs CUDA 13, so the CUDA build takes
    # its toolkit from PyPI (recipes/cuda_toolkit.toml) and the reason says why the host's cannot.
    "linux-rtx2080super-driver610": row(
        "cu130",
        {},
        ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=75"),
        GPU_ENVS,
        reasons={"llama-cpp-python": "toolkit from PyPI (nvcc 13.0.88"},
    ),
    # Driver 450 and Python 3.8: nothing installs; every reason says why.
    "linux-8x-a100-driver450": row(
        "cpu",
        {**dict.fromkeys(BACKENDS, ""), "xinference": "Python >= 3.10", "llama-cpp-python": "gcc 7.5.0"},
        None,
        warnings=("nvidia-driver-too-old",),
        reasons={"torch": "upgrade the driver"},
    ),
    "linux-a100-driver535": row(
        "cu126",
        no_gpu_engines(vllm="CUDA 13 build and needs driver >= 580"),
        ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=80"),
        reasons={"torch": "would allow cu130"},
    ),
    "linux-rtx3090-driver570": row(
        "cu126",
        no_gpu_engines(vllm="cu129"),
        ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=86"),
        warnings=("cuda-cublas-unknown",),
        reasons={"xllamacpp": "cu128"},
    ),
    "linux-l40s-driver580": row("cu130", {}, ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=89"), GPU_ENVS),
    "linux-h100-driver590": row(
        "cu130",
        {},
        ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=90"),
        GPU_ENVS,
        # cu132's compute_90 PTX needs a CUDA 13.2 driver; 590 supports 13.1.
        reasons={"xllamacpp": "cu128 wheel"},
    ),
    # Four H100s plan like one: the plan is per host; serve spreads a model over them.
    "linux-4x-h100-driver590": row(
        "cu130",
        {},
        ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=90"),
        GPU_ENVS,
        reasons={"xllamacpp": "cu128 wheel"},
    ),
    "linux-rtx4090-driver550": row(
        "cu126",
        no_gpu_engines(vllm="driver >= 580", sglang="driver >= 580"),
        ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=89"),
        warnings=("cuda-cublas-unknown",),
    ),
    "linux-8x-h200-driver570": row(
        "cu126",
        no_gpu_engines(sglang="driver 570.133.20 runs CUDA <= 12.8"),
        ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=90"),
    ),
    # aarch64 GH200: vLLM's aarch64 floor is glibc 2.34 (2.35 here); xllamacpp's CUDA wheels
    # cover Linux arm64 too, and sm_90 runs cu128's PTX (driver 590 supports CUDA 13.1 < 13.2).
    "linux-gh200-aarch64-driver590": row(
        "cu130",
        {},
        ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=90"),
        GPU_ENVS,
        reasons={"xllamacpp": "cu128 wheel"},
    ),
    "linux-b200-driver580": row("cu130", {}, ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=100"), GPU_ENVS),
    # Blackwell on a 12.x driver: only torch < 2.12's cu128 has sm_120 kernels.
    "linux-rtx5090-driver570": row(
        "cu128",
        no_gpu_engines(),
        ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=120"),
        spec="<2.12",
        warnings=("torch-legacy-index",),
    ),
    "linux-rtx-pro-6000-driver595": row(
        "cu130", {}, ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=120"), GPU_ENVS
    ),
    # Mixed 3090 + 1070: torch cu126 covers both; vLLM (cu130, >= 7.5) names the card it leaves out;
    # the llama.cpp build carries both archs.
    "linux-mixed-3090-1070-driver580": row(
        "cu126",
        {},
        ("-DGGML_CUDA=on", "-DCMAKE_CUDA_ARCHITECTURES=61;86"),
        GPU_ENVS,
        warnings=("engine-gpu-left-out",),
    ),
    "linux-mi300x-rocm6.3": row(
        "rocm7.1",
        no_gpu_engines(vllm="Python 3.12 only", sglang="Docker"),
        ("-DGGML_HIP=on", "-DGPU_TARGETS=gfx942"),
        reasons={
            "xllamacpp": "no xllamacpp ROCm wheel runs AMD Instinct MI300X (gfx942) with ROCm 6.3.3",
        },
    ),
    "linux-mi250x-rocm6.4": row(
        "rocm7.1",
        no_gpu_engines(),
        ("-DGGML_HIP=on", "-DGPU_TARGETS=gfx90a"),
        # rocm-6.4.1 has no gfx90a kernels, and xllamacpp's GPU wheels need glibc 2.35 (2.31 here).
        reasons={"xllamacpp": "CPU wheel from PyPI"},
        warnings=("xllamacpp-cpu-wheel",),
    ),
    "linux-rx7900xtx-no-hipcc": row(
        "rocm7.1", no_gpu_engines(), (), reasons={"llama-cpp-python": "no hipcc"}
    ),
    "macos-m1max": row(
        "mps", no_gpu_engines(vllm="Linux only"), ("-DGGML_METAL=on",), reasons={"xinference": "mlx"}
    ),
    "macos-intel-i5": row(
        "cpu",
        {**no_gpu_engines(), "transformers": "needs torch >= 2.6"},
        ("-DGGML_METAL=off",),
        spec="==2.2.2",
        warnings=("torch-intel-mac",),
    ),
    "windows-rtx2080super-driver610": row(
        "cu130", {**no_gpu_engines(vllm="WSL2"), "llama-cpp-python": "Visual Studio"}, None
    ),
    "linux-graviton3-cpu": row("cpu", no_gpu_engines(), ()),
    # This machine: nvcc without cuBLAS and no GPU.
    "linux-cpu-debian12-nvcc-no-cublas": row(
        "cpu", no_gpu_engines(vllm="no NVIDIA GPU"), (), warnings=("profile-note",)
    ),
    # CentOS 7: torch needs glibc 2.28, gcc 4.8.5 cannot build llama.cpp;
    # xllamacpp's manylinux2014 wheel works.
    "centos7-glibc2.17-cpu": row(
        "cpu",
        {
            **no_gpu_engines(),
            "xinference": "glibc >= 2.28",
            "llama-cpp-python": "gcc 4.8.5",
            "transformers": "glibc >= 2.28",
        },
        None,
    ),
    # A GPU on the bus with no driver: CPU plan, and the warning says to install the driver.
    "linux-nvidia-no-driver": row(
        "cpu",
        no_gpu_engines(vllm="no NVIDIA driver"),
        (),
        warnings=("nvidia-no-driver",),
        reasons={"torch": "install the NVIDIA driver"},
    ),
}


def test_matrix_covers_every_profile_file():
    assert {p.stem for p in PROFILES.glob("*.json")} == set(EXPECTED)
    assert len(EXPECTED) >= 15


@pytest.fixture(scope="module")
def recipes():
    return load_recipes()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_decisions(name, recipes):
    want = EXPECTED[name]
    plan = make_plan(load_profile(PROFILES / f"{name}.json"), PlanRequest(), recipes)
    assert plan.torch.variant == want["torch"], plan.torch.reason
    assert plan.torch.version_spec == want["spec"]
    assert [b.name for b in plan.backends] == list(BACKENDS)
    assert {b.name for b in plan.backends if b.action == "skip"} == set(want["skips"])
    for name, text in want["skips"].items():
        assert text in plan.backend(name).reason, f"{name}: {plan.backend(name).reason!r} lacks {text!r}"
    for b in plan.backends:
        assert b.reason, b.name
        assert (b.environment is None) == (b.action == "skip"), b.name
    llama = plan.backend("llama-cpp-python")
    if want["cmake"] is None:
        assert llama.action == "skip"
    else:
        assert llama.build is not None and llama.build.cmake_args == want["cmake"]
        assert llama.env["CMAKE_ARGS"] == " ".join(want["cmake"])
        assert llama.version == "0.3.36"
    assert tuple(e.name for e in plan.environments) == want["envs"]
    codes = {w.code for w in plan.warnings}
    assert set(want["warnings"]) <= codes, codes
    for key, text in want["reasons"].items():
        reason = plan.torch.reason if key == "torch" else plan.backend(key).reason
        assert text in reason, f"{key}: {reason!r} lacks {text!r}"


def test_gpu_engines_get_their_own_environments_with_pinned_torch(recipes):
    plan = make_plan(load_profile(PROFILES / "linux-h100-driver590.json"), PlanRequest(), recipes)
    vllm, sglang, main = plan.environment("vllm"), plan.environment("sglang"), plan.environment("main")
    assert vllm.requirements == ("vllm==0.33.0",) and vllm.torch.version_spec == "==2.14.0"
    assert sglang.requirements == ("sglang==0.5.23",) and sglang.torch.version_spec == "==2.14.1"
    assert vllm.torch.variant == sglang.torch.variant == "cu130"
    assert "click<8.2.0" in vllm.reason and "torch==2.14.1" in vllm.reason
    primary = tuple(b.name for b in registry() if b.environment == "primary")
    assert main.backends == primary
    assert primary[:4] == ("xinference", "transformers", "llama-cpp-python", "xllamacpp")
    xinf = plan.backend("xinference")
    assert xinf.packages == ("xinference[transformers]==4.1.0",)
    assert "not [vllm]/[sglang]" in xinf.reason and "[all]" in xinf.reason
    assert plan.backend("xllamacpp").extra_index_urls == ("https://xorbitsai.github.io/xllamacpp/whl/cu128",)


def test_mixed_gpus_vllm_names_the_card_left_out(recipes):
    plan = make_plan(load_profile(PROFILES / "linux-mixed-3090-1070-driver580.json"), PlanRequest(), recipes)
    assert plan.torch.covers == ("sm_86", "sm_61")
    assert plan.environment("vllm").torch.covers == ("sm_86",)
    left = [w.message for w in plan.warnings if w.code == "engine-gpu-left-out"]
    assert any("vllm cannot use NVIDIA GeForce GTX 1070 (sm_61)" in m for m in left)


def test_old_python_gets_a_python_for_the_engine_env(recipes):
    # The RTX 3090 profile runs Python 3.10; on a 580 driver vLLM/SGLang need 3.11+.
    from dataclasses import replace

    from provision.profile import NvidiaDriver

    p = load_profile(PROFILES / "linux-rtx3090-driver570.json")
    p = replace(p, nvidia=NvidiaDriver("580.82.09", "13.0"))
    plan = make_plan(p, PlanRequest(), recipes)
    assert plan.environment("vllm").python == "3.12"
    assert "Python 3.12 for its environment" in plan.backend("vllm").reason
    assert plan.environment("main").python is None


def test_this_machine_plan_matches_the_brief(recipes):
    plan = make_plan(
        load_profile(PROFILES / "linux-cpu-debian12-nvcc-no-cublas.json"), PlanRequest(), recipes
    )
    assert plan.torch.index_url == "https://download.pytorch.org/whl/cpu"
    assert plan.environment("main").torch.version_spec is None  # 2.13.0+cpu from find-links must satisfy it
    assert plan.backend("xinference").packages == ("xinference[transformers]==4.1.0",)
    assert plan.backend("llama-cpp-python").build.expected_backends == ("cpu",)
    assert plan.backend("xllamacpp").extra_index_urls == ()


def test_torch_index_mirror_replaces_the_base(recipes):
    req = PlanRequest(torch_index_base="https://mirror.example/pytorch/whl/")
    plan = make_plan(load_profile(PROFILES / "linux-h100-driver590.json"), req, recipes)
    assert plan.torch.index_url == "https://mirror.example/pytorch/whl/cu130"
    assert plan.environment("vllm").torch.index_url == "https://mirror.example/pytorch/whl/cu130"


def test_portable_cpu_build(recipes):
    plan = make_plan(
        load_profile(PROFILES / "linux-graviton3-cpu.json"), PlanRequest(portable_cpu=True), recipes
    )
    build = plan.backend("llama-cpp-python").build
    assert build.portable
    assert build.cmake_args == ("-DGGML_NATIVE=OFF", "-DGGML_CPU_ALL_VARIANTS=ON", "-DGGML_BACKEND_DL=ON")


def test_backend_subset_lists_only_what_was_asked(recipes):
    profile = load_profile(PROFILES / "linux-h100-driver590.json")
    plan = make_plan(profile, PlanRequest(backends=("vllm", "llama-cpp-python")), recipes)
    assert [b.name for b in plan.backends] == ["vllm", "llama-cpp-python"]
    assert plan.environment("main").backends == ("llama-cpp-python",)
    assert plan.environment("main").torch is None  # llama.cpp needs no torch
    assert plan.environment("vllm").backends == ("vllm",)


def test_plan_json_round_trips_through_plan_from_dict(recipes):
    import json

    from provision.plan import plan_from_dict

    for name in ("linux-h100-driver590", "linux-mixed-3090-1070-driver580", "macos-intel-i5"):
        plan = make_plan(load_profile(PROFILES / f"{name}.json"), PlanRequest(), recipes)
        again = plan_from_dict(json.loads(plan.to_json()))
        assert again == plan


def test_reasons_follow_the_recipe_pins(recipes):
    """A pin bumped in recipes/backends.toml shows in every reason that quotes it."""
    from copy import deepcopy
    from dataclasses import replace

    engines = deepcopy(dict(recipes.engines))
    engines["xinference"].update(version="9.9.0", click_pin="click<9.1", hub_ceiling="7.7")
    engines["vllm"].update(version="0.99.0", torch="2.98.0")
    engines["sglang"].update(torch="2.97.0")
    engines["transformers"].update(python_min="3.9")
    bumped = replace(recipes, engines=engines)
    plan = make_plan(load_profile(PROFILES / "linux-h100-driver590.json"), PlanRequest(), bumped)
    text = " ".join([*(b.reason for b in plan.backends), *(e.reason for e in plan.environments)])
    for old in ("4.1.0", "click<8.2.0", "1.31", "0.33.0", "2.14.0", "2.14.1"):
        assert old not in text, old
    assert "xinference 9.9.0 (click<9.1 keeps huggingface-hub < 7.7)" in plan.backend("transformers").reason
    assert "(vllm 0.99.0 pins 2.98.0)" in plan.environment("sglang").reason
    assert "nor sglang's (torch==2.97.0)" in plan.environment("vllm").reason


def test_a_recorded_plan_with_an_unknown_action_is_refused(recipes):
    import json

    from provision.errors import UserError
    from provision.plan import plan_from_dict

    plan = make_plan(load_profile(PROFILES / "linux-graviton3-cpu.json"), PlanRequest(), recipes)
    d = json.loads(plan.to_json())
    d["backends"][0]["action"] = "upgrade"
    with pytest.raises(UserError, match="backend action 'upgrade' is not one of install, skip"):
        plan_from_dict(d)
