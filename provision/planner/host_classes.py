"""Hosts that need a route of their own: Rosetta, Jetson, RDNA2 without rocBLAS kernels, WSL2,
NVML errors and virtual GPUs (issue 20's classes 5, 6, 15, 16, 19). Pure: profile and
recipes/host_classes.toml in, decisions and warnings out; make_plan applies them.

- Rosetta: nothing is installed; every backend's reason names the arm64 Python to use.
- Jetson: torch from NVIDIA's Jetson index for the JetPack the L4T release (or the -tegra
  kernel series) gives, or the CPU build with the advice; never the server (SBSA) CUDA torch.
  vLLM/SGLang are skipped, xllamacpp takes its CPU wheel.
- RDNA2 gfx1031-1036: planned as gfx1030 (torch's ROCm wheels, xllamacpp's index, the HIP
  build) with HSA_OVERRIDE_GFX_VERSION, which runtime_env() puts into every process.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache
from typing import Any

from provision.errors import OperationFailed
from provision.plan import BackendDecision, PlanWarning, TorchChoice
from provision.planner.recipes import read_recipe
from provision.planner.versions import vtuple
from provision.profile import HostProfile, Tegra


@dataclass(frozen=True)
class JetsonRelease:
    l4t: str
    jetpack: str
    kernel: str
    cuda: str
    torch_variant: str  # "" when NVIDIA publishes no index for it
    torch_index: str
    sm: int


@dataclass(frozen=True)
class HostClassRecipes:
    rosetta_python_hint: str
    rosetta_shell_hint: str
    rosetta_homebrew_python: str
    jetson_releases: tuple[JetsonRelease, ...]
    jetson_containers: str
    jetson_skip_engines: tuple[str, ...]
    override_gfx: tuple[str, ...]
    override_as_gfx: str
    hsa_override: str
    override_unproven: tuple[str, ...]
    wsl_lib_dir: str
    nvml_advice: str
    flashinfer_engines: tuple[str, ...]
    flashinfer_jit_cache_index: str


def host_class_recipes_from_dict(d: dict[str, Any]) -> HostClassRecipes:
    try:
        r, j, o = d["rosetta"], d["jetson"], d["rocm_override"]
        return HostClassRecipes(
            rosetta_python_hint=r["python_hint"],
            rosetta_shell_hint=r["shell_hint"],
            rosetta_homebrew_python=r["homebrew_python"],
            jetson_releases=tuple(JetsonRelease(**x) for x in j["release"]),
            jetson_containers=j["containers"],
            jetson_skip_engines=tuple(j["engines_without_jetson_wheels"]),
            override_gfx=tuple(o["gfx"]),
            override_as_gfx=o["as_gfx"],
            hsa_override=o["hsa_override"],
            override_unproven=tuple(o["unproven"]),
            wsl_lib_dir=d["wsl"]["lib_dir"],
            nvml_advice=d["nvml"]["advice"],
            flashinfer_engines=tuple(d["flashinfer"]["engines"]),
            flashinfer_jit_cache_index=d["flashinfer"]["jit_cache_index"],
        )
    except (KeyError, TypeError) as e:
        raise OperationFailed(
            f"recipes/host_classes.toml: a required entry is missing or malformed ({e})"
        ) from None


@cache
def load_host_classes() -> HostClassRecipes:
    try:
        return host_class_recipes_from_dict(read_recipe("host_classes.toml"))
    except (KeyError, TypeError) as e:
        raise OperationFailed(f"recipes/host_classes.toml cannot be read: {e}") from None


# ---------------------------------------------------------------- Jetson


def jetson_release(tegra: Tegra, rec: HostClassRecipes) -> JetsonRelease | None:
    """The JetPack row for this Jetson: by L4T major, else by the -tegra kernel's series."""
    if tegra.l4t:
        major = tegra.l4t.split(".")[0]
        return next((r for r in rec.jetson_releases if r.l4t == major), None)
    kernel = vtuple(tegra.kernel)[:2]
    return next((r for r in rec.jetson_releases if vtuple(r.kernel) == kernel), None)


def _jetson_label(tegra: Tegra, rel: JetsonRelease | None) -> str:
    seen = f"L4T {tegra.l4t}" if tegra.l4t else f"kernel {tegra.kernel or 'unknown'}"
    return f"Jetson ({seen}, JetPack {rel.jetpack})" if rel else f"Jetson ({seen}, JetPack unknown)"


def jetson_torch(
    profile: HostProfile, rec: HostClassRecipes
) -> tuple[TorchChoice, tuple[PlanWarning, ...]] | None:
    """torch for a Jetson: its JetPack's index, or the CPU build with the advice. None: not a Jetson."""
    tegra = profile.jetson
    if tegra is None:
        return None
    rel = jetson_release(tegra, rec)
    label = _jetson_label(tegra, rel)
    if rel is not None and rel.torch_index:
        sm = f"sm_{rel.sm}"
        reason = (
            f"{label}: torch built for JetPack {rel.jetpack} (CUDA {rel.cuda}) from NVIDIA's Jetson "
            f"index; the server (SBSA) aarch64 CUDA wheels do not run on the Tegra GPU"
        )
        return TorchChoice(rel.torch_variant, rel.torch_index, reason, covers=(sm,)), ()
    if rel is None:
        why = (
            f"{label}: the JetPack release is not known (no /etc/nv_tegra_release, or an L4T "
            "release not in recipes/host_classes.toml)"
        )
    else:
        why = (
            f"{label}: NVIDIA publishes no pip index of CUDA torch for JetPack {rel.jetpack} "
            f"(CUDA {rel.cuda}; only NVIDIA's own Python 3.8 wheels)"
        )
    msg = (
        f"{why}; torch is the CPU build, never the server (SBSA) CUDA torch: flash JetPack 6 or "
        f"newer and plan again, or use a jetson-containers image ({rec.jetson_containers})"
    )
    return TorchChoice("cpu", None, msg), (PlanWarning("jetson-no-torch-index", msg),)


def _jetson_engine(
    name: str, d: BackendDecision, profile: HostProfile, rec: HostClassRecipes
) -> BackendDecision:
    tegra = profile.jetson
    assert tegra is not None
    label = _jetson_label(tegra, jetson_release(tegra, rec))
    if name in rec.jetson_skip_engines:  # whatever the generic rule said, this is the reason
        return BackendDecision(
            name,
            "skip",
            f"{label}: {name} publishes no JetPack wheels (its aarch64 CUDA wheels are for SBSA "
            f"servers): use a jetson-containers image ({rec.jetson_containers})",
        )
    if name == "xllamacpp" and d.action == "install" and d.extra_index_urls:
        return dataclasses.replace(
            d,
            extra_index_urls=(),
            reason=f"{d.reason.split(':', 1)[0]}: CPU wheel from PyPI: {label}: xllamacpp's aarch64 "
            "CUDA wheels are SBSA builds, not JetPack's",
        )
    return d


# ---------------------------------------------------------------- RDNA2 without rocBLAS kernels


@dataclass(frozen=True)
class GfxOverride:
    gpus: tuple[str, ...]  # "AMD Radeon RX 6700 XT (gfx1031)"
    from_gfx: tuple[str, ...]
    as_gfx: str
    hsa: str
    applies: bool  # False: other AMD GPUs a process-wide override would misreport
    unproven: tuple[str, ...]


def gfx_override(profile: HostProfile, rec: HostClassRecipes) -> GfxOverride | None:
    amd = [g for g in profile.amd_gpus if g.gfx]
    needing = [g for g in amd if g.gfx in rec.override_gfx]
    if not needing or profile.os.system != "linux":
        return None
    others = [g for g in amd if g not in needing and g.gfx != rec.override_as_gfx]
    from_gfx = tuple(sorted({g.gfx for g in needing if g.gfx}))
    return GfxOverride(
        gpus=tuple(f"{g.name} ({g.gfx})" for g in needing),
        from_gfx=from_gfx,
        as_gfx=rec.override_as_gfx,
        hsa=rec.hsa_override,
        applies=not others,
        unproven=tuple(x for x in from_gfx if x in rec.override_unproven),
    )


def effective_profile(profile: HostProfile) -> HostProfile:
    """The profile the engines are planned for: RDNA2 targets without rocBLAS kernels read as
    gfx1030 (what the runtime reports under HSA_OVERRIDE_GFX_VERSION). The plan keeps the real one."""
    rec = load_host_classes()
    o = gfx_override(profile, rec)
    if o is None or not o.applies:
        return profile
    gpus = tuple(
        dataclasses.replace(g, gfx=o.as_gfx) if g.vendor == "amd" and g.gfx in o.from_gfx else g
        for g in profile.gpus
    )
    return dataclasses.replace(profile, gpus=gpus)


# ---------------------------------------------------------------- Rosetta


def rosetta_reason(profile: HostProfile, rec: HostClassRecipes) -> str | None:
    if not profile.rosetta:
        return None
    minor = f"{profile.python.minor[0]}.{profile.python.minor[1]}"
    return (
        f"this Python ({profile.python.version}) is x86_64 running under Rosetta 2 on an Apple Silicon "
        f"Mac ({profile.cpu.brand or 'Apple CPU'}): it would install x86_64 wheels and an x86 llama.cpp "
        f"without Metal, about 10x slower; run xinfer-setup from an arm64 Python: "
        f"`{rec.rosetta_python_hint.format(minor=minor)}`, or {rec.rosetta_homebrew_python} "
        f"(from an `{rec.rosetta_shell_hint}` shell)"
    )


# ---------------------------------------------------------------- applying them


def adjust_torch(profile: HostProfile, torch: TorchChoice) -> tuple[TorchChoice, tuple[PlanWarning, ...]]:
    """The torch choice for a host class that needs its own (Rosetta, Jetson); else unchanged."""
    rec = load_host_classes()
    why = rosetta_reason(profile, rec)
    if why is not None:
        return TorchChoice("cpu", None, f"nothing is installed: {why}"), ()
    jetson = jetson_torch(profile, rec)
    if jetson is not None:
        return jetson
    return torch, ()


def adjust_backend(profile: HostProfile, d: BackendDecision) -> BackendDecision:
    """One backend's decision after the host-class rules (Rosetta refuses all; Jetson some)."""
    rec = load_host_classes()
    why = rosetta_reason(profile, rec)
    if why is not None:
        return BackendDecision(d.name, "skip", why)
    if profile.jetson is not None:
        return _jetson_engine(d.name, d, profile, rec)
    return d


def host_warnings(profile: HostProfile) -> tuple[PlanWarning, ...]:
    """What the plan must say about this kind of host, each with its code."""
    rec = load_host_classes()
    out: list[PlanWarning] = []
    why = rosetta_reason(profile, rec)
    if why is not None:
        out.append(PlanWarning("rosetta", f"refused: {why}"))
    o = gfx_override(profile, rec)
    if o is not None and o.applies:
        msg = (
            f"{', '.join(o.gpus)}: no rocBLAS kernels for {', '.join(o.from_gfx)}; {o.as_gfx} code is "
            f"planned and HSA_OVERRIDE_GFX_VERSION={o.hsa} is set for builds, engines and serve "
            f"(set it yourself for anything run by hand)"
        )
        if o.unproven:
            msg += f"; reported to fail on {', '.join(o.unproven)} (APUs) even so"
        out.append(PlanWarning("rocm-gfx-override", msg))
    elif o is not None:
        out.append(
            PlanWarning(
                "rocm-gfx-override-mixed",
                f"{', '.join(o.gpus)}: no rocBLAS kernels for {', '.join(o.from_gfx)}, and "
                f"HSA_OVERRIDE_GFX_VERSION={o.hsa} would also misreport the other AMD GPUs: not set; "
                f"hide these with HIP_VISIBLE_DEVICES, or run them alone with the override",
            )
        )
    if profile.wsl and profile.nvidia_gpus:
        out.append(
            PlanWarning(
                "wsl-libcuda",
                f"WSL2: the Windows driver's libcuda is in {rec.wsl_lib_dir}, which is put on "
                "LD_LIBRARY_PATH for builds, engines and serve; never install a Linux NVIDIA driver in WSL",
            )
        )
    p = profile.platform
    if p.nvml_error is not None:
        seen = (
            f"{len(profile.nvidia_gpus)} GPU(s) listed by the kernel module"
            if profile.nvidia_gpus
            else "no GPU list"
        )
        out.append(
            PlanWarning(
                "nvml-error",
                f"NVML failed ({p.nvml_error}) although the NVIDIA driver is loaded ({seen}): this is an "
                f"NVML error, not a host without GPUs; {rec.nvml_advice}",
            )
        )
    if "vgpu" in p.gpu_virtualization:
        out.append(
            PlanWarning(
                "nvidia-vgpu",
                "NVIDIA vGPU guest: the guest driver's CUDA version is the limit, and engines see the "
                "vGPU profile's memory, not the physical GPU's",
            )
        )
    if "mig" in p.gpu_virtualization:
        out.append(
            PlanWarning(
                "nvidia-mig",
                "MIG is enabled: engines see MIG slices (select one with CUDA_VISIBLE_DEVICES=MIG-<uuid>); "
                "memory per engine is the slice's",
            )
        )
    return tuple(out)


def engine_warnings(
    profile: HostProfile, backends: tuple[BackendDecision, ...], torch_of: dict[str, TorchChoice | None]
) -> tuple[PlanWarning, ...]:
    """What the planned engines will need at run time that this host lacks (class 14: FlashInfer's
    JIT needs nvcc). torch_of: each installed backend's torch, for the CUDA variant of the cache."""
    rec = load_host_classes()
    if profile.toolchain.nvcc:
        return ()
    out = []
    for b in backends:
        if b.action != "install" or b.name not in rec.flashinfer_engines:
            continue
        t = torch_of.get(b.name)
        if t is None or not t.variant.startswith("cu"):
            continue
        index = rec.flashinfer_jit_cache_index.format(variant=t.variant)
        out.append(
            PlanWarning(
                "flashinfer-jit-nvcc",
                f"{b.name}: FlashInfer compiles kernels at first use and this host has no nvcc: install "
                f"flashinfer-cubin and flashinfer-jit-cache (from {index}) into its environment, or a "
                "CUDA toolkit, before serving",
            )
        )
    return tuple(out)
