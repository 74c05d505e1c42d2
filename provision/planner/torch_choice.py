"""Which PyTorch build an environment gets: by OS, GPU vendor, driver AND every GPU's arch.

Order, written down once:
  1. macOS: Apple Silicon -> the default wheel (MPS); Intel -> the last x86_64 wheel (2.2.2).
  2. NVIDIA GPUs: no driver, or one older than every CUDA build's floor -> CPU, said so.
     Otherwise the first CUDA index (recipes/torch.toml order) the driver allows whose
     kernels cover every GPU; else an older torch whose index covers them all (cu128 for
     Blackwell on a 12.x driver); else the index covering the most GPUs, naming the rest.
  3. AMD GPUs on Linux whose gfx the ROCm wheels carry -> the ROCm index.
  4. Intel GPUs -> xpu.
  5. Anything else -> the CPU index (PyPI's default Linux wheel is a CUDA build).
"""

from __future__ import annotations

from dataclasses import dataclass

from provision.plan import PlanWarning, TorchChoice
from provision.planner.recipes import CudaBuild, Recipes
from provision.planner.versions import at_least, sm_label, vtuple
from provision.profile import GPU, HostProfile


@dataclass(frozen=True)
class TorchOutcome:
    choice: TorchChoice
    warnings: tuple[PlanWarning, ...] = ()


def index_url(base: str, variant: str) -> str:
    return f"{base.rstrip('/')}/{variant}"


def driver_floor(build: CudaBuild, system: str) -> str:
    return build.driver_windows if system == "windows" else build.driver_linux


def gpu_label(g: GPU) -> str:
    return f"{g.name} ({sm_label(g.sm)})" if g.sm else g.name


def cuda_builds_allowed(profile: HostProfile, recipes: Recipes) -> tuple[CudaBuild, ...]:
    """CUDA indexes whose driver floor this host's NVIDIA driver meets."""
    if profile.nvidia is None:
        return ()
    return tuple(
        b
        for b in recipes.torch.cuda
        if at_least(profile.nvidia.driver_version, driver_floor(b, profile.os.system))
    )


def choose_cuda(
    gpus: tuple[GPU, ...], allowed: tuple[CudaBuild, ...]
) -> tuple[CudaBuild | None, tuple[GPU, ...]]:
    """The build to use and the GPUs it leaves out (pure: the order of `allowed` is preference)."""
    known = tuple(g for g in gpus if g.sm)
    current = [b for b in allowed if not b.torch_max]
    for b in current:
        if all(_covers(b, g) for g in known):
            return b, ()
    for b in allowed:
        if b.torch_max and all(_covers(b, g) for g in known):
            return b, ()
    best, best_n = None, 0
    for b in current:
        n = sum(_covers(b, g) for g in known)
        if n > best_n:
            best, best_n = b, n
    if best is None:
        return None, known
    return best, tuple(g for g in known if not _covers(best, g))


def _covers(build: CudaBuild, gpu: GPU) -> bool:
    return gpu.sm is not None and build.covers(gpu.sm)


def _cpu(profile: HostProfile, base: str, reason: str) -> TorchChoice:
    return TorchChoice("cpu", index_url(base, "cpu"), reason)


def choose_torch(profile: HostProfile, recipes: Recipes, base: str) -> TorchOutcome:
    t = recipes.torch
    system, arch = profile.os.system, profile.os.arch
    if system == "darwin":
        if arch == "arm64":
            return TorchOutcome(
                TorchChoice(
                    "mps", None, "Apple Silicon: PyPI's default macOS arm64 wheel has the MPS backend"
                )
            )
        return TorchOutcome(
            TorchChoice(
                "cpu",
                None,
                f"Intel Mac: PyTorch publishes macOS x86_64 wheels only up to torch{t.macos_x86_64_spec}",
                version_spec=t.macos_x86_64_spec,
            ),
            (
                PlanWarning(
                    "torch-intel-mac",
                    f"Intel Mac: torch is capped at {t.macos_x86_64_spec[2:]} "
                    "(no newer macOS x86_64 wheels); GPU engines are unavailable",
                ),
            ),
        )

    nvidia = profile.nvidia_gpus
    if nvidia:
        return _choose_nvidia(profile, recipes, base)

    amd = profile.amd_gpus
    if amd and system == "linux":
        usable = [g for g in amd if g.gfx in t.rocm_gfx]
        if usable:
            left = [g for g in amd if g not in usable]
            warnings = tuple(
                PlanWarning(
                    "torch-gpu-left-out",
                    f"{g.name} ({g.gfx or 'gfx unknown'}) has no kernels in "
                    f"torch's {t.rocm_variant} wheels: it will not be used",
                )
                for g in left
            )
            return TorchOutcome(
                TorchChoice(
                    t.rocm_variant,
                    index_url(base, t.rocm_variant),
                    f"AMD {', '.join(sorted({g.gfx for g in usable if g.gfx}))}: torch's {t.rocm_variant} "
                    "wheels carry kernels for it (they bundle the ROCm runtime; the amdgpu kernel driver "
                    "must be loaded)",
                    covers=tuple(sorted({g.gfx for g in usable if g.gfx})),
                ),
                warnings,
            )
        names = ", ".join(f"{g.name} ({g.gfx or 'gfx unknown'})" for g in amd)
        return TorchOutcome(
            _cpu(profile, base, f"{names}: not among the GPUs torch's ROCm wheels support: CPU build"),
            (
                PlanWarning(
                    "torch-no-gpu-build", f"{names}: no ROCm build of torch supports it; torch runs on CPU"
                ),
            ),
        )
    if amd:
        return TorchOutcome(
            _cpu(profile, base, f"AMD GPU on {system}: torch's ROCm wheels are Linux only: CPU build"),
        )
    if any(g.vendor == "intel" for g in profile.gpus):
        return TorchOutcome(TorchChoice("xpu", index_url(base, "xpu"), "Intel GPU: torch's xpu wheels"))
    return TorchOutcome(
        _cpu(profile, base, "no GPU: the CPU build (PyPI's default Linux torch is a CUDA build)")
    )


def _choose_nvidia(profile: HostProfile, recipes: Recipes, base: str) -> TorchOutcome:
    gpus = profile.nvidia_gpus
    names = ", ".join(g.name for g in gpus)
    system = profile.os.system
    if profile.nvidia is None:
        msg = (
            f"{names}: no NVIDIA driver answers (nvidia-smi/NVML): install the NVIDIA driver "
            "(>= 580 for CUDA 13 builds) and plan again; until then torch is the CPU build"
        )
        return TorchOutcome(_cpu(profile, base, msg), (PlanWarning("nvidia-no-driver", msg),))
    driver = profile.nvidia.driver_version
    unknown = [g for g in gpus if not g.sm]
    warnings: list[PlanWarning] = [
        PlanWarning("gpu-arch-unknown", f"{g.name}: compute capability unknown; assumed covered by the build")
        for g in unknown
    ]
    allowed = cuda_builds_allowed(profile, recipes)
    if not allowed:
        floor = min((driver_floor(b, system) for b in recipes.torch.cuda), key=vtuple)
        msg = (
            f"NVIDIA driver {driver} is older than {floor}, the oldest any current CUDA build of torch "
            f"accepts: upgrade the driver (>= 580 for CUDA 13 builds, >= {floor} for cu126); "
            "until then torch is the CPU build"
        )
        return TorchOutcome(_cpu(profile, base, msg), (*warnings, PlanWarning("nvidia-driver-too-old", msg)))
    build, left_out = choose_cuda(gpus, allowed)
    if build is None:
        labels = ", ".join(gpu_label(g) for g in left_out)
        msg = (
            f"{labels}: no torch CUDA build the driver {driver} allows has kernels for it; "
            "torch is the CPU build"
        )
        return TorchOutcome(_cpu(profile, base, msg), (*warnings, PlanWarning("torch-no-gpu-build", msg)))
    covered = tuple(dict.fromkeys(sm_label(g.sm) for g in gpus if g.sm and build.covers(g.sm)))
    floor = driver_floor(build, system)
    reason = (
        f"driver {driver} >= {floor} allows CUDA {build.cuda}; {build.variant} has kernels for "
        f"{', '.join(covered) or 'the GPUs'}"
    )
    spec = None
    if build.torch_max:
        spec = f"<{build.torch_max}"
        msg = (
            f"{build.variant} (CUDA {build.cuda}) is the only build with kernels for "
            f"{', '.join(covered)} that driver {driver} allows, and torch dropped it in {build.torch_max}: "
            f"torch{spec} is planned; a driver >= 580 allows current cu130 builds"
        )
        warnings.append(PlanWarning("torch-legacy-index", msg))
        reason += f"; only torch{spec} has this index"
    newer = [b for b in recipes.torch.cuda if not b.torch_max and b not in allowed]
    if not build.torch_max and newer and any(b.covers(g.sm) for b in newer for g in gpus if g.sm):
        reason += f" (a driver >= {driver_floor(newer[0], system)} would allow {newer[0].variant})"
    for g in left_out:
        warnings.append(
            PlanWarning(
                "torch-gpu-left-out",
                f"{gpu_label(g)} is left out: {build.variant} has no kernels for it "
                f"(it covers {', '.join(covered)}); hide it with CUDA_VISIBLE_DEVICES",
            )
        )
    if left_out:
        reason += f"; leaves out {', '.join(gpu_label(g) for g in left_out)}"
    return TorchOutcome(
        TorchChoice(build.variant, index_url(base, build.variant), reason, version_spec=spec, covers=covered),
        tuple(warnings),
    )


def engine_torch(
    profile: HostProfile, recipes: Recipes, base: str, variant: str, version: str, engine: str
) -> tuple[TorchChoice, tuple[GPU, ...]]:
    """The torch an engine pins (vllm/sglang), and the GPUs its build cannot use."""
    build = next(b for b in recipes.torch.cuda if b.variant == variant)
    gpus = profile.nvidia_gpus
    covered = tuple(dict.fromkeys(sm_label(g.sm) for g in gpus if g.sm and build.covers(g.sm)))
    left = tuple(g for g in gpus if g.sm and not build.covers(g.sm))
    reason = (
        f"{engine} pins torch=={version}, a CUDA {build.cuda} build ({variant}); "
        f"kernels for {', '.join(covered)}"
    )
    return TorchChoice(variant, index_url(base, variant), reason, f"=={version}", covered), left
