"""xllamacpp's wheel index: the newest index with code every GPU can run with this driver.

Facts (recipes/backends.toml [xllamacpp], from xllamacpp 2026.10.11549's README): cu132 ships
native code for sm_75/86/89/120/121 and PTX only for compute_80/90 (nothing for 50/61/70);
cu128 ships native sm_86/89/120 and PTX for compute_50/61/70/75/80/90. PTX JITs only when the
driver natively supports the wheel's CUDA (13.2 / 12.8); GPU wheels need glibc >= 2.35.
Every profile in tests/profiles/ has a row; the variants below are the same real captures
with one fact changed (driver, GPU, glibc, ROCm), where no capture has that combination.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from provision.plan import PlanRequest
from provision.planner import load_recipes, make_plan
from provision.profile import GPU, HostProfile, NvidiaDriver, RocmInfo, load_profile

PROFILES = Path(__file__).parent / "profiles"
BASE = "https://xorbitsai.github.io/xllamacpp/whl"
CPU_WARN = "xllamacpp-cpu-wheel"

# profile -> (index or None for PyPI's wheel, reason substrings, whether the CPU-wheel warning is due)
EXPECTED: dict[str, tuple[str | None, tuple[str, ...], bool]] = {
    "centos7-glibc2.17-cpu": (None, ("CPU wheel from PyPI (no NVIDIA or AMD GPU)",), False),
    "linux-8x-a100-driver450": (None, ("Python >= 3.10",), False),  # skipped: Python 3.8
    "linux-8x-h200-driver570": (
        "cu128",
        (
            "NVIDIA H200 (sm_90) runs its compute_90 PTX through the driver's JIT",
            "driver 570.133.20, CUDA 12.8",
            "not cu132: driver 570.133.20 is older than its floor 580.65.06",
        ),
        False,
    ),
    "linux-a100-driver535": (
        None,
        (
            "NVIDIA A100-SXM4-80GB (sm_80) has only PTX in the cu128 wheel and driver 535.54.03 "
            "supports CUDA 12.2 < 12.8",
            "upgrade the driver to >= 570 for the cu128 wheel",
        ),
        True,
    ),
    "linux-b200-driver580": (
        "cu128",
        (
            "NVIDIA B200 (sm_100) runs its compute_90 PTX",
            "not cu132: NVIDIA B200 (sm_100) has only PTX in the cu132 wheel and driver 580.95.05 "
            "supports CUDA 13.0 < 13.2",
        ),
        False,
    ),
    "linux-cpu-debian12-nvcc-no-cublas": (None, ("no NVIDIA or AMD GPU",), False),
    # The README: the same arch lists for Linux x86_64 and arm64 CUDA wheels.
    "linux-gh200-aarch64-driver590": (
        "cu128",
        ("NVIDIA GH200 480GB (sm_90) runs its compute_90 PTX", "CUDA 13.1 < 13.2"),
        False,
    ),
    "linux-graviton3-cpu": (None, ("no NVIDIA or AMD GPU",), False),
    "linux-h100-driver590": (
        "cu128",
        (
            "cu128 wheel from xllamacpp's GPU index",
            "not cu132: NVIDIA H100 80GB HBM3 (sm_90) has only PTX in the cu132 wheel and driver "
            "590.48.01 supports CUDA 13.1 < 13.2",
        ),
        False,
    ),
    "linux-4x-h100-driver590": ("cu128", ("NVIDIA H100 80GB HBM3 (sm_90) runs its compute_90 PTX",), False),
    # Native sm_89 code in a CUDA 12.8 build runs on a 12.4 driver (CUDA minor-version compatibility).
    "linux-rtx4090-driver550": (
        "cu128",
        ("NVIDIA GeForce RTX 4090 (sm_89) runs its native code", "driver 550.127.05 is older than its floor"),
        False,
    ),
    "linux-l40s-driver580": ("cu132", ("NVIDIA L40S (sm_89) runs its native code",), False),
    # glibc 2.31, and rocm-6.4.1 has no gfx90a either.
    "linux-mi250x-rocm6.4": (
        None,
        ("ROCm wheels need glibc >= 2.35 and this host has glibc 2.31", "AMD Instinct MI250X (gfx90a)"),
        True,
    ),
    "linux-mi300x-rocm6.3": (
        None,
        (
            "no xllamacpp ROCm wheel runs AMD Instinct MI300X (gfx942) with ROCm 6.3.3",
            "not rocm-7.2.4: it is for ROCm >= 7.2",
            "it has no kernels for gfx942",
        ),
        True,
    ),
    "linux-mixed-3090-1070-driver580": (
        "cu128",
        (
            "NVIDIA GeForce RTX 3090 (sm_86) runs its native code",
            "NVIDIA GeForce GTX 1070 (sm_61) runs its compute_61 PTX",
            "not cu132: NVIDIA GeForce GTX 1070 (sm_61) has no code in the cu132 wheel",
        ),
        False,
    ),
    "linux-nvidia-no-driver": (None, ("no NVIDIA driver answers", "install the driver"), True),
    "linux-p100-driver535": (
        None,
        ("CUDA wheels need glibc >= 2.35 and this host has glibc 2.31", "Tesla P100-PCIE-16GB (sm_60)"),
        True,
    ),
    "linux-rtx-pro-6000-driver595": (
        "cu132",
        ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition (sm_120) runs its native code",),
        False,
    ),
    "linux-rtx2080super-driver610": (
        "cu132",
        ("NVIDIA GeForce RTX 2080 SUPER (sm_75) runs its native code",),
        False,
    ),
    "linux-rtx3090-driver570": (
        "cu128",
        ("NVIDIA GeForce RTX 3090 (sm_86) runs its native code", "not cu132: driver 570.133.07"),
        False,
    ),
    "linux-rtx5090-driver570": ("cu128", ("NVIDIA GeForce RTX 5090 (sm_120) runs its native code",), False),
    "linux-rx7900xtx-no-hipcc": (
        None,
        ("Radeon RX 7900 XTX (gfx1100) with ROCm 6.2.4", "not rocm-6.4.1: it is for ROCm >= 6.4"),
        True,
    ),
    "linux-t4-driver580": ("cu132", ("Tesla T4 (sm_75) runs its native code", "CUDA 13.0"), False),
    "linux-tesla-p4-driver580": (
        "cu128",
        ("Tesla P4 (sm_61) runs its compute_61 PTX", "not cu132: Tesla P4 (sm_61) has no code"),
        False,
    ),
    "linux-titan-v-driver515": (
        None,
        (
            "not cu128: driver 515.65.01 is older than its floor 525.60.13",
            "NVIDIA TITAN V (sm_70) has no code in the cu132 wheel",
            "upgrade the driver to >= 570 for the cu128 wheel",
        ),
        True,
    ),
    "macos-intel-i5": (None, ("Intel Mac",), False),
    "macos-m1max": (None, ("Metal on Apple Silicon",), False),
    "windows-rtx2080super-driver610": (
        "cu132",
        ("NVIDIA GeForce RTX 2080 SUPER (sm_75) runs its native code",),
        False,
    ),
}


@pytest.fixture(scope="module")
def recipes():
    return load_recipes()


def profile(name: str) -> HostProfile:
    return load_profile(PROFILES / f"{name}.json")


def nvidia(base: str, gpus: list[tuple[str, str | None]], driver: str, cuda: str | None) -> HostProfile:
    """A real capture with its NVIDIA GPUs and driver replaced (cuda None: read from /proc)."""
    p = profile(base)
    cards = tuple(GPU("nvidia", n, compute_capability=cc, index=i) for i, (n, cc) in enumerate(gpus))
    return replace(
        p,
        gpus=cards,
        nvidia=NvidiaDriver(driver, cuda, "nvml" if cuda else "proc"),
    )


def amd(base: str, gfx: list[tuple[str, str]], rocm: str, libc: str) -> HostProfile:
    p = profile(base)
    cards = tuple(GPU("amd", n, gfx=g, index=i) for i, (n, g) in enumerate(gfx))
    return replace(p, gpus=cards, rocm=RocmInfo(rocm), os=replace(p.os, libc=libc))


def decide(p: HostProfile, recipes):
    plan = make_plan(p, PlanRequest(), recipes)
    return plan.backend("xllamacpp"), {w.code: w.message for w in plan.warnings}


def check(p: HostProfile, recipes, index: str | None, texts: tuple[str, ...], warned: bool):
    b, warnings = decide(p, recipes)
    assert b.extra_index_urls == ((f"{BASE}/{index}",) if index else ()), b.reason
    for text in texts:
        assert text in b.reason, f"{b.reason!r} lacks {text!r}"
    assert (CPU_WARN in warnings) == warned, warnings
    if b.action == "install":
        assert b.packages == ("xllamacpp==2026.10.11549",)
    return b, warnings


def test_every_profile_has_an_expected_index():
    assert {p.stem for p in PROFILES.glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_index(name, recipes):
    index, texts, warned = EXPECTED[name]
    check(profile(name), recipes, index, texts, warned)


# Variants: one fact changed on a real capture.
VARIANTS = {
    # Pascal consumer card, new driver: cu132 has no sm_61; cu128's compute_61 PTX JITs (13.0 >= 12.8).
    "gtx1070-driver580": (
        nvidia("linux-tesla-p4-driver580", [("NVIDIA GeForce GTX 1070", "6.1")], "580.82.09", "13.0"),
        "cu128",
        ("NVIDIA GeForce GTX 1070 (sm_61) runs its compute_61 PTX", "has no code in the cu132 wheel"),
        False,
    ),
    # Pascal on a 12.6 driver: the PTX cannot JIT, and no wheel has native sm_61.
    "tesla-p4-driver560": (
        nvidia("linux-tesla-p4-driver580", [("Tesla P4", "6.1")], "560.35.03", "12.6"),
        None,
        (
            "Tesla P4 (sm_61) has only PTX in the cu128 wheel and driver 560.35.03 supports CUDA 12.6 < 12.8",
            "upgrade the driver to >= 570 for the cu128 wheel",
        ),
        True,
    ),
    # Hopper on a driver that supports CUDA 13.2: cu132's compute_90 PTX can JIT.
    "h100-driver595": (
        nvidia("linux-h100-driver590", [("NVIDIA H100 80GB HBM3", "9.0")], "595.58.03", "13.2"),
        "cu132",
        ("NVIDIA H100 80GB HBM3 (sm_90) runs its compute_90 PTX through the driver's JIT",),
        False,
    ),
    # No cuda_driver_version (read from /proc): derived from the driver branch, 590 -> 13.1.
    "h100-driver590-no-cuda-version": (
        nvidia("linux-h100-driver590", [("NVIDIA H100 80GB HBM3", "9.0")], "590.48.01", None),
        "cu128",
        ("driver 590.48.01 supports CUDA 13.1 < 13.2", "driver 590.48.01, CUDA 13.1"),
        False,
    ),
    "h100-driver595-no-cuda-version": (
        nvidia("linux-h100-driver590", [("NVIDIA H100 80GB HBM3", "9.0")], "595.58.03", None),
        "cu132",
        ("CUDA 13.2",),
        False,
    ),
    "a100-driver535-no-cuda-version": (
        nvidia("linux-a100-driver535", [("NVIDIA A100-SXM4-80GB", "8.0")], "535.183.01", None),
        None,
        ("supports CUDA 12.2 < 12.8",),
        True,
    ),
    # Ampere consumer on a 13.2 driver: native sm_86 in cu132.
    "rtx3080-driver595": (
        nvidia("linux-rtx3090-driver570", [("NVIDIA GeForce RTX 3080", "8.6")], "595.58.03", "13.2"),
        "cu132",
        ("NVIDIA GeForce RTX 3080 (sm_86) runs its native code",),
        False,
    ),
    # CentOS 7 with a T4: the CUDA wheels need glibc 2.35; PyPI's manylinux2014 CPU wheel works.
    "centos7-t4": (
        nvidia("centos7-glibc2.17-cpu", [("Tesla T4", "7.5")], "580.126.09", "13.0"),
        None,
        ("CUDA wheels need glibc >= 2.35 and this host has glibc 2.17", "Tesla T4 (sm_75)"),
        True,
    ),
    # Mixed: the 4090 is native in cu128, the 1070's PTX needs CUDA 12.8: the card is named.
    "mixed-4090-1070-driver560": (
        nvidia(
            "linux-mixed-3090-1070-driver580",
            [("NVIDIA GeForce RTX 4090", "8.9"), ("NVIDIA GeForce GTX 1070", "6.1")],
            "560.35.03",
            "12.6",
        ),
        None,
        ("not cu128: NVIDIA GeForce GTX 1070 (sm_61) has only PTX in the cu128 wheel",),
        True,
    ),
    "mixed-h100-3090-driver590": (
        nvidia(
            "linux-h100-driver590",
            [("NVIDIA H100 80GB HBM3", "9.0"), ("NVIDIA GeForce RTX 3090", "8.6")],
            "590.48.01",
            "13.1",
        ),
        "cu128",
        (
            "NVIDIA GeForce RTX 3090 (sm_86) runs its native code",
            "H100 80GB HBM3 (sm_90) runs its compute_90",
        ),
        False,
    ),
    # Windows floors differ (580.88 / 528.33): an R565 driver gets cu128's native sm_89.
    "windows-rtx4090-driver566": (
        nvidia("windows-rtx2080super-driver610", [("NVIDIA GeForce RTX 4090", "8.9")], "566.36", "12.7"),
        "cu128",
        ("not cu132: driver 566.36 is older than its floor 580.88", "(sm_89) runs its native code"),
        False,
    ),
    "windows-2080-driver528": (
        nvidia(
            "windows-rtx2080super-driver610", [("NVIDIA GeForce RTX 2080 SUPER", "7.5")], "528.49", "12.0"
        ),
        None,
        ("(sm_75) has only PTX in the cu128 wheel and driver 528.49 supports CUDA 12.0 < 12.8",),
        True,
    ),
    # ROCm: the host's ROCm picks the index, and the GPU's gfx must be in its list.
    "mi300x-rocm7.2": (
        amd("linux-mi300x-rocm6.3", [("AMD Instinct MI300X", "gfx942")] * 2, "7.2.1", "glibc 2.35"),
        "rocm-7.2.4",
        (
            "rocm-7.2.4 wheel from xllamacpp's GPU index (ROCm 7.2.1): "
            "kernels for AMD Instinct MI300X (gfx942)",
        ),
        False,
    ),
    "rx7900xtx-rocm6.4": (
        amd("linux-rx7900xtx-no-hipcc", [("Radeon RX 7900 XTX", "gfx1100")], "6.4.1", "glibc 2.39"),
        "rocm-6.4.1",
        ("rocm-6.4.1", "Radeon RX 7900 XTX (gfx1100)", "not rocm-7.2.4: it is for ROCm >= 7.2"),
        False,
    ),
    "mi250x-rocm6.4-glibc2.35": (
        amd("linux-mi250x-rocm6.4", [("AMD Instinct MI250X", "gfx90a")], "6.4.1", "glibc 2.35"),
        None,
        ("not rocm-6.4.1: it has no kernels for gfx90a (no JIT on ROCm)",),
        True,
    ),
    "mi50-rocm7.2": (
        amd("linux-mi300x-rocm6.3", [("AMD Instinct MI50", "gfx906")], "7.2.1", "glibc 2.35"),
        None,
        ("not rocm-7.2.4: it has no kernels for gfx906",),
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_index(name, recipes):
    p, index, texts, warned = VARIANTS[name]
    check(p, recipes, index, texts, warned)


def test_cpu_wheel_warning_says_what_to_do(recipes):
    p = nvidia("linux-h100-driver590", [("NVIDIA A100-SXM4-80GB", "8.0")], "535.54.03", "12.2")
    _, warnings = decide(p, recipes)
    msg = warnings[CPU_WARN]
    assert "NVIDIA A100-SXM4-80GB (sm_80)" in msg and "upgrade the driver to >= 570" in msg


def test_unknown_arch_is_warned_and_assumed_covered(recipes):
    p = nvidia(
        "linux-l40s-driver580",
        [("NVIDIA L40S", "8.9"), ("NVIDIA Graphics Device", None)],
        "580.126.09",
        "13.0",
    )
    b, warnings = decide(p, recipes)
    assert b.extra_index_urls == (f"{BASE}/cu132",)
    assert "NVIDIA Graphics Device" in warnings["xllamacpp-arch-unknown"]


def test_python_and_glibc_floors_come_from_the_recipe():
    recipes = load_recipes()
    profile = load_profile(PROFILES / "linux-graviton3-cpu.json")  # Python 3.11, glibc 2.34

    def reason(**floors: str) -> str:
        bumped = replace(recipes, xllamacpp=replace(recipes.xllamacpp, **floors))
        return make_plan(profile, PlanRequest(backends=("xllamacpp",)), bumped).backend("xllamacpp").reason

    assert "cp312-abi3: Python >= 3.12 needed" in reason(python_min="3.12")
    assert "manylinux2014 (glibc >= 2.40)" in reason(linux_glibc_min="2.40")
