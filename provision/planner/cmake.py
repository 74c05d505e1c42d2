"""CMAKE_ARGS for the llama-cpp-python source build: from the hardware, the toolchain and the
version built, plus the user's own CMAKE_ARGS with legacy names translated.

Order, written down once:
  1. Apple Silicon -> Metal. Intel Mac -> CPU.
  2. NVIDIA GPUs with a driver -> CUDA, for exactly the archs present that this nvcc can
     compile, when nvcc (with cuBLAS) is there and its CUDA major the driver runs; else CPU,
     saying what to install.
  3. AMD GPUs with a gfx target on Linux -> HIP for those targets when hipcc is there.
  4. Otherwise CPU: -march=native, or every CPU variant with --portable.
  5. The user's CMAKE_ARGS last (CMake: the last -D of a variable wins).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from provision.errors import OperationFailed, UserError
from provision.plan import BuildSpec, PlanWarning
from provision.planner.recipes import LlamaCppRecipes, NvccRange
from provision.planner.toolkit import ToolkitRecipe, pypi_toolkit, pypi_toolkit_reason, toolkit_recipes
from provision.planner.versions import at_least, vtuple
from provision.profile import HostProfile

_DEFINE = re.compile(r"^-D([A-Za-z_][A-Za-z0-9_]*)(:[A-Za-z]+)?=(.*)$")
_TRUE = ("ON", "1", "TRUE", "YES", "Y")


@dataclass(frozen=True)
class LlamaBuild:
    spec: BuildSpec
    reason: str
    warnings: tuple[PlanWarning, ...] = ()


def translate_user_args(text: str, rec: LlamaCppRecipes) -> tuple[tuple[str, ...], tuple[PlanWarning, ...]]:
    """A user's CMAKE_ARGS with legacy names replaced by today's; UserError for what has no translation.

    Sample (a ROCm line from older install guides): '-DLLAMA_HIPBLAS=on' -> ('-DGGML_HIP=on',)
    and a warning that, passed through, it would have built CPU-only.
    """
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        raise UserError(f"CMAKE_ARGS cannot be parsed ({e})") from None
    out: list[str] = []
    warnings: list[PlanWarning] = []
    for tok in tokens:
        m = _DEFINE.match(tok)
        if not m:
            raise UserError(
                f"CMAKE_ARGS: {tok!r} is not a -DNAME=VALUE option (the only form passed to the build)"
            )
        name, typ, value = m.group(1), m.group(2) or "", m.group(3)
        if name in rec.removed:
            raise UserError(
                f"CMAKE_ARGS: -D{name} has no equivalent in llama-cpp-python {rec.for_version}: "
                f"{rec.removed[name]}"
            )
        if name in rec.legacy:
            new = rec.legacy[name]
            effect = {
                "LLAMA_CUBLAS": "is a CMake FATAL_ERROR",
                "LLAMA_HIPBLAS": "is ignored (only a 'variables not used' warning) and builds CPU-only",
                "GGML_HIPBLAS": "is silently ignored and builds CPU-only",
            }.get(name, "is a deprecated alias")
            warnings.append(
                PlanWarning(
                    "cmake-legacy-name",
                    f"CMAKE_ARGS: -D{name} {effect} in llama-cpp-python "
                    f"{rec.for_version}; translated to -D{new}={value}",
                )
            )
            name = new
        out.append(f"-D{name}{typ}={value}")
    return tuple(out), tuple(warnings)


def effective_args(args: tuple[str, ...]) -> tuple[str, ...]:
    """The arguments CMake acts on: other arguments as given, then one -D per variable, the last
    value given winning (as in CMake), in first-seen order. The plan's build args and the
    wheelhouse key both come from this one rule."""
    last: dict[str, str] = {}
    others: list[str] = []
    for a in args:
        m = _DEFINE.match(a)
        if m:
            last[m.group(1)] = a
        else:
            others.append(a)
    return tuple(others) + tuple(last.values())


def option(args: tuple[str, ...], name: str) -> str | None:
    for a in reversed(args):
        m = _DEFINE.match(a)
        if m and m.group(1) == name:
            return m.group(3)
    return None


def expected_backends(args: tuple[str, ...], rec: LlamaCppRecipes) -> tuple[str, ...]:
    found = ["cpu"]
    for flag, backend in rec.backend_of.items():
        value = option(args, flag)
        if value is not None and value.upper() in _TRUE and backend != "blas":
            found.append(backend)
    return tuple(found)


def nvcc_range(nvcc: str, table: tuple[NvccRange, ...]) -> NvccRange | None:
    return next((r for r in table if at_least(nvcc, r.since)), None)


@dataclass(frozen=True)
class CudaFlags:
    """The CUDA part of the build: its -D flags (empty: no CUDA build), why, and whose toolkit."""

    args: tuple[str, ...]
    reason: str
    warnings: tuple[PlanWarning, ...] = ()
    toolkit: str | None = None  # the PyPI toolkit's nvcc version, when the build takes it from PyPI


def _host_nvcc_refusal(profile: HostProfile, rec: LlamaCppRecipes) -> str | None:
    """Why the host's nvcc cannot make this CUDA build (what to install), or None when it can."""
    tc = profile.toolchain
    names = ", ".join(g.name for g in profile.nvidia_gpus)
    if not tc.nvcc:
        return (
            f"no nvcc for {names}: install the CUDA toolkit with cuBLAS "
            "(e.g. apt install cuda-toolkit-12-8) and plan again for a CUDA build"
        )
    if tc.cuda_cublas is False:
        return (
            f"nvcc {tc.nvcc} is here but cuBLAS (libcublas) is not, and ggml-cuda "
            "links it: install the toolkit's cuBLAS (e.g. apt install libcublas-dev-12-8) "
            "for a CUDA build"
        )
    nvidia = profile.nvidia
    driver_cuda = nvidia.cuda_driver_version if nvidia else None
    if nvidia and driver_cuda and vtuple(tc.nvcc)[:1] > vtuple(driver_cuda)[:1]:
        return (
            f"nvcc {tc.nvcc} makes CUDA {vtuple(tc.nvcc)[0]} binaries, but driver "
            f"{nvidia.driver_version} runs CUDA <= {driver_cuda}: install a CUDA "
            f"{vtuple(driver_cuda)[0]}.x toolkit, or a driver >= 580"
        )
    sms = sorted({g.sm for g in profile.nvidia_gpus if g.sm})
    rng = nvcc_range(tc.nvcc, rec.nvcc)
    if sms and rng is not None and not any(rng.sm_min <= s <= rng.sm_max for s in sms):
        return (
            f"nvcc {tc.nvcc} cannot compile for sm_{', sm_'.join(map(str, sms))}: "
            "install a CUDA 12.x toolkit (12.8 compiles sm_50 to sm_120)"
        )
    return None


def _cuda(profile: HostProfile, rec: LlamaCppRecipes, toolkits: tuple[ToolkitRecipe, ...]) -> CudaFlags:
    """CUDA flags for the GPUs present, with the host's nvcc or a PyPI toolkit; or () and why not."""
    tc = profile.toolchain
    warnings: list[PlanWarning] = []
    refusal = _host_nvcc_refusal(profile, rec)
    pypi = pypi_toolkit(profile, toolkits) if refusal else None
    if refusal and pypi is None:
        return CudaFlags((), f"CPU build: {refusal}")
    nvcc = pypi.nvcc if pypi else tc.nvcc
    assert nvcc is not None
    if pypi is None and tc.cuda_cublas is None:
        warnings.append(
            PlanWarning(
                "cuda-cublas-unknown",
                f"the profile does not say whether nvcc {nvcc} has cuBLAS; "
                "assumed present for the CUDA build of llama-cpp-python",
            )
        )
    rng = nvcc_range(nvcc, rec.nvcc)
    sms = sorted({g.sm for g in profile.nvidia_gpus if g.sm})
    ok = [s for s in sms if rng is None or rng.sm_min <= s <= rng.sm_max]
    if sms and not ok:
        return CudaFlags(
            (),
            f"CPU build: nvcc {nvcc} cannot compile for sm_{', sm_'.join(map(str, sms))}: "
            "install a CUDA 12.x toolkit (12.8 compiles sm_50 to sm_120)",
        )
    for s in (s for s in sms if s not in ok):
        gpu = next(g for g in profile.nvidia_gpus if g.sm == s)
        warnings.append(
            PlanWarning(
                "llama-gpu-left-out",
                f"llama-cpp-python: nvcc {nvcc} cannot compile for "
                f"{gpu.name} (sm_{s}); the build covers sm_{', sm_'.join(map(str, ok))} only "
                "(a CUDA 12.8 toolkit covers both)",
            )
        )
    args = [f"-D{rec.flags['cuda']}=on"]
    if ok:
        args.append(f"-D{rec.flags['cuda_archs']}={';'.join(str(s) for s in ok)}")
    archs = ", ".join(f"sm_{s}" for s in ok) or "the GPUs present"
    reason = f"CUDA build for {archs} (only the GPUs present) with nvcc {nvcc}"
    if pypi is not None:
        reason += f"; {pypi_toolkit_reason(pypi, f'the host cannot build it ({refusal})')}"
    return CudaFlags(tuple(args), reason, tuple(warnings), pypi.nvcc if pypi else None)


def _hip(profile: HostProfile, rec: LlamaCppRecipes) -> tuple[tuple[str, ...], str]:
    gfx = sorted({g.gfx for g in profile.amd_gpus if g.gfx})
    names = ", ".join(g.name for g in profile.amd_gpus)
    if not gfx:
        return (), f"CPU build: the gfx target of {names} is unknown (rocminfo did not say)"
    if not profile.toolchain.hipcc:
        return (), (
            f"CPU build: no hipcc for {names} ({', '.join(gfx)}): install ROCm with hipBLAS/rocBLAS "
            "(e.g. amdgpu-install --usecase=rocm) and plan again for a HIP build"
        )
    args = (f"-D{rec.flags['hip']}=on", f"-D{rec.flags['hip_targets']}={';'.join(gfx)}")
    return (
        args,
        f"HIP build for {', '.join(gfx)} (only the GPUs present) with hipcc {profile.toolchain.hipcc}",
    )


def llama_build(
    profile: HostProfile, rec: LlamaCppRecipes, version: str, user_args: str | None, portable: bool
) -> LlamaBuild:
    if version != rec.for_version:
        raise OperationFailed(
            f"recipes: llama_cpp.toml describes llama-cpp-python {rec.for_version}, "
            f"backends.toml plans {version}"
        )
    warnings: list[PlanWarning] = []
    system, arch = profile.os.system, profile.os.arch
    args: tuple[str, ...] = ()
    toolkit: str | None = None
    if system == "darwin" and arch == "arm64":
        args, reason = (f"-D{rec.flags['metal']}=on",), "Metal build (Apple Silicon)"
    elif system == "darwin":
        args, reason = (f"-D{rec.flags['metal']}=off",), "CPU build (Intel Mac: Metal is for Apple Silicon)"
    elif profile.nvidia_gpus and profile.nvidia is not None:
        cuda = _cuda(profile, rec, toolkit_recipes())
        args, reason, toolkit = cuda.args, cuda.reason, cuda.toolkit
        warnings.extend(cuda.warnings)
    elif profile.nvidia_gpus:
        reason = "CPU build: the NVIDIA GPU has no driver answering (install it, then plan again)"
    elif profile.amd_gpus and system == "linux":
        args, reason = _hip(profile, rec)
    else:
        reason = "CPU build"
    if portable:
        args = args + rec.portable
        reason += "; portable CPU code (every CPU variant, chosen at run time)"
    elif system != "darwin":
        reason += "; CPU code for this machine's CPU (-march=native; --portable for images)"
    if user_args:
        extra, user_warnings = translate_user_args(user_args, rec)
        warnings.extend(user_warnings)
        args = args + extra
        reason += f"; with your CMAKE_ARGS ({' '.join(extra)})"
        if option(extra, rec.flags["cuda"]) and not profile.toolchain.nvcc and toolkit is None:
            warnings.append(
                PlanWarning(
                    "cmake-user-cuda-no-nvcc",
                    "CMAKE_ARGS asks for CUDA but the profile has no nvcc: the build will fail",
                )
            )
    final = effective_args(args)
    return LlamaBuild(
        BuildSpec(
            cmake_args=final,
            expected_backends=expected_backends(final, rec),
            portable=portable,
            cuda_toolkit=toolkit if (option(final, rec.flags["cuda"]) or "").upper() in _TRUE else None,
        ),
        reason,
        tuple(warnings),
    )
