"""xllamacpp: which of its wheels fits this host (PyPI's CPU/Metal wheel or a GPU index), and why.

Pure, like the rest of the planner: the facts are recipes/backends.toml [xllamacpp] (from
xllamacpp's README), the host is the profile.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from provision.plan import PRIMARY_ENV, BackendDecision, PlanWarning
from provision.planner.engines import EngineOutcome, glibc, py, skip
from provision.planner.recipes import Recipes, XllamacppCudaWheel, XllamacppRecipes
from provision.planner.torch_choice import gpu_label
from provision.planner.versions import at_least, vtuple
from provision.profile import GPU, HostProfile, NvidiaDriver

# recipes/backends.toml [xllamacpp] driver_cuda: (driver branch, the CUDA it supports), newest first.
DriverCudaTable = tuple[tuple[str, str], ...]


def decide_xllamacpp(profile: HostProfile, recipes: Recipes) -> EngineOutcome:
    """xllamacpp: always installed where its wheels fit; the GPU index only where it runs every GPU.

    Order: macOS -> PyPI (Metal on Apple Silicon); NVIDIA GPUs -> the newest CUDA index that has
    code every GPU can run with this driver, else PyPI's CPU wheel with a warning; AMD GPUs on
    Linux -> the newest ROCm index for the host's ROCm that lists every GPU's gfx, else CPU.
    """
    e = recipes.xllamacpp
    v = e.version
    if not at_least(py(profile), e.python_min):
        abi = "cp" + e.python_min.replace(".", "")
        return skip(
            "xllamacpp",
            f"xllamacpp wheels are {abi}-abi3: Python >= {e.python_min} needed, this environment has "
            f"{profile.python.version}",
        )
    if profile.os.system == "linux" and not at_least(glibc(profile), e.linux_glibc_min):
        return skip(
            "xllamacpp",
            f"xllamacpp wheels are {e.linux_tag} (glibc >= {e.linux_glibc_min}); this host has "
            f"{profile.os.libc or 'no glibc'}",
        )
    choice = _XllamaChoice(None, "CPU wheel from PyPI (no NVIDIA or AMD GPU)")
    if profile.os.system == "darwin":
        why = (
            "PyPI wheel (Metal on Apple Silicon)"
            if profile.os.arch == "arm64"
            else "CPU wheel from PyPI (Intel Mac)"
        )
        choice = _XllamaChoice(None, why)
    elif profile.nvidia_gpus:
        choice = _xllamacpp_cuda(profile, e)
    elif profile.amd_gpus and profile.os.system == "linux":
        choice = _xllamacpp_rocm(profile, e)
    index = f"{e.gpu_index_base}/{choice.index}" if choice.index else None
    return EngineOutcome(
        BackendDecision(
            "xllamacpp",
            "install",
            f"Xinference's llama.cpp engine (since 1.6): {choice.why}",
            (f"xllamacpp=={v}",),
            environment=PRIMARY_ENV,
            version=v,
            extra_index_urls=(index,) if index else (),
        ),
        choice.warnings,
    )


@dataclass(frozen=True)
class _XllamaChoice:
    index: str | None  # the GPU index's name (cu128, rocm-7.2.4), None for PyPI's wheel
    why: str
    warnings: tuple[PlanWarning, ...] = ()


def _cpu_wheel(why: str, fix: str) -> _XllamaChoice:
    msg = f"xllamacpp: {why}: {fix}"
    return _XllamaChoice(
        None, f"CPU wheel from PyPI: {why}: {fix}", (PlanWarning("xllamacpp-cpu-wheel", msg),)
    )


def _labels(gpus: Iterable[GPU]) -> list[str]:
    return list(dict.fromkeys(gpu_label(g) for g in gpus))


def _driver_cuda(driver: NvidiaDriver, table: DriverCudaTable) -> str | None:
    """The CUDA version the driver supports natively: as reported, else its driver branch's.

    NVML's cudaDriverGetVersion / nvidia-smi's "CUDA Version: 13.1" is the profile's
    cuda_driver_version; a profile read from /proc has only "590.48.01", hence the table.
    """
    if driver.cuda_driver_version:
        return driver.cuda_driver_version
    branch = vtuple(driver.driver_version)[:1]
    return next((cuda for floor, cuda in table if branch and branch[0] >= int(floor)), None)


def _branch_for_cuda(cuda: str, table: DriverCudaTable) -> str | None:
    """The oldest driver branch that natively supports CUDA `cuda` (13.2 -> 595)."""
    fits = [int(floor) for floor, c in table if at_least(c, cuda)]
    return str(min(fits)) if fits else None


def _how_it_runs(sm: int, w: XllamacppCudaWheel) -> str:
    if sm in w.sass:
        return "native code"
    return f"compute_{max(p for p in w.ptx if p <= sm)} PTX through the driver's JIT"


def _wheel_problems(
    w: XllamacppCudaWheel,
    gpus: Sequence[GPU],
    driver: str,
    driver_cuda: str | None,
    system: str,
    table: DriverCudaTable,
) -> tuple[list[str], str | None]:
    """Why this index cannot run every GPU here, and the driver that would fix it (None: none)."""
    problems: list[str] = []
    needs: list[str] = []
    floor = w.driver_windows if system == "windows" else w.driver_linux
    if not at_least(driver, floor):
        problems.append(f"driver {driver} is older than its floor {floor}")
        needs.append(floor)
    fixable = True
    for label, sm in dict.fromkeys((gpu_label(g), g.sm) for g in gpus if g.sm is not None):
        if sm in w.sass:
            continue
        if not any(p <= sm for p in w.ptx):
            problems.append(f"{label} has no code in the {w.index} wheel")
            fixable = False
        elif not at_least(driver_cuda, w.cuda):
            need = _branch_for_cuda(w.cuda, table)
            problems.append(
                f"{label} has only PTX in the {w.index} wheel and driver {driver} supports "
                f"CUDA {driver_cuda or 'unknown'} < {w.cuda}"
            )
            if need:
                needs.append(need)
            else:
                fixable = False
    return problems, (max(needs, key=vtuple) if fixable and needs else None)


def _xllamacpp_cuda(profile: HostProfile, e: XllamacppRecipes) -> _XllamaChoice:
    gpus = profile.nvidia_gpus
    names = ", ".join(_labels(gpus))
    if profile.nvidia is None:
        return _cpu_wheel(
            f"{names}: no NVIDIA driver answers", "install the driver and plan again for a CUDA wheel"
        )
    platform = f"{profile.os.system}-{profile.os.arch}"
    if platform not in e.cuda_platforms:
        return _cpu_wheel(
            f"xllamacpp's CUDA wheels are for {', '.join(e.cuda_platforms)}, not {platform}",
            "llama-cpp-python's source build can use the GPU",
        )
    if profile.os.system == "linux" and not at_least(glibc(profile), e.cuda_glibc_min):
        return _cpu_wheel(
            f"xllamacpp's CUDA wheels need glibc >= {e.cuda_glibc_min} and this host has "
            f"{profile.os.libc or 'no glibc'}, so {names} is not used",
            "use a newer distribution (e.g. Ubuntu 22.04+) or a container for the GPU build",
        )
    driver = profile.nvidia.driver_version
    table = e.driver_cuda
    driver_cuda = _driver_cuda(profile.nvidia, table)
    known = [g for g in gpus if g.sm]
    warnings = tuple(
        PlanWarning(
            "xllamacpp-arch-unknown",
            f"{label}: compute capability unknown; xllamacpp's CUDA wheel is assumed to cover it",
        )
        for label in _labels(g for g in gpus if not g.sm)
    )
    rejected: list[str] = []
    fixes: list[tuple[str, str]] = []
    for w in e.cuda:
        problems, fix = _wheel_problems(w, known, driver, driver_cuda, profile.os.system, table)
        if problems:
            rejected.append(f"not {w.index}: {'; '.join(problems)}")
            if fix:
                fixes.append((fix, w.index))
            continue
        runs = "; ".join(
            f"{label} runs its {_how_it_runs(sm, w)}"
            for label, sm in dict.fromkeys((gpu_label(g), g.sm) for g in known if g.sm is not None)
        )
        why = (
            f"{w.index} wheel from xllamacpp's GPU index: {runs or names} "
            f"(driver {driver}, CUDA {driver_cuda or 'unknown'})"
        )
        return _XllamaChoice(w.index, "; ".join([why, *rejected]), warnings)
    if fixes:
        need, index = min(fixes, key=lambda f: vtuple(f[0]))
        fix = f"upgrade the driver to >= {need} for the {index} wheel, or build llama.cpp from source"
    else:
        fix = "llama-cpp-python's source build can target it (CMAKE_CUDA_ARCHITECTURES)"
    choice = _cpu_wheel(f"no xllamacpp CUDA wheel runs on every GPU here ({'; '.join(rejected)})", fix)
    return _XllamaChoice(None, choice.why, (*warnings, *choice.warnings))


def _xllamacpp_rocm(profile: HostProfile, e: XllamacppRecipes) -> _XllamaChoice:
    gpus = profile.amd_gpus
    names = ", ".join(dict.fromkeys(f"{g.name} ({g.gfx or 'gfx unknown'})" for g in gpus))
    rocm = profile.rocm.version if profile.rocm else None
    have = f"ROCm {rocm}" if rocm else "no ROCm"
    if not at_least(glibc(profile), e.rocm_glibc_min):
        return _cpu_wheel(
            f"xllamacpp's ROCm wheels need glibc >= {e.rocm_glibc_min} and this host has "
            f"{profile.os.libc or 'no glibc'}, so {names} is not used",
            "use a newer distribution (e.g. Ubuntu 22.04+) or a container for the GPU build",
        )
    gfx = list(dict.fromkeys(g.gfx for g in gpus if g.gfx))
    rejected: list[str] = []
    for w in e.rocm:
        problems = []
        if not at_least(rocm, w.rocm_min):
            problems.append(f"it is for ROCm >= {w.rocm_min} and this host has {have}")
        missing = [x for x in gfx if x not in w.gfx]
        if missing:
            problems.append(f"it has no kernels for {', '.join(missing)} (no JIT on ROCm)")
        if problems:
            rejected.append(f"not {w.index}: {' and '.join(problems)}")
            continue
        why = f"{w.index} wheel from xllamacpp's GPU index ({have}): kernels for {names}"
        return _XllamaChoice(w.index, "; ".join([why, *rejected]))
    return _cpu_wheel(
        f"no xllamacpp ROCm wheel runs {names} with {have} ({'; '.join(rejected)})",
        "install the ROCm version of a wheel that lists the GPU, or build llama.cpp from source",
    )
