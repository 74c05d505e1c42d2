"""One decision per backend: install (where, which version, why) or skip (why, and what to do).

Each function is pure: profile and recipes in, an EngineOutcome out. Which environment an engine
goes into is decided here too, because the reason is a fact about its pins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from provision.plan import PRIMARY_ENV, BackendDecision, BuildSpec, PlanWarning, TorchChoice
from provision.planner import vllm_cpu
from provision.planner.cmake import llama_build
from provision.planner.recipes import Recipes
from provision.planner.torch_choice import engine_torch, gpu_label
from provision.planner.versions import at_least, vtuple
from provision.profile import HostProfile, NvidiaDriver


@dataclass(frozen=True)
class EngineOutcome:
    backend: BackendDecision
    warnings: tuple[PlanWarning, ...] = ()
    # For an engine in its own environment: its torch and the Python it needs.
    torch: TorchChoice | None = None
    env_python: str | None = None
    env_reason: str = ""
    extras: tuple[str, ...] = field(default_factory=tuple)


def skip(name: str, reason: str, *warnings: PlanWarning) -> EngineOutcome:
    return EngineOutcome(BackendDecision(name, "skip", reason), tuple(warnings))


def py(profile: HostProfile) -> str:
    return f"{profile.python.minor[0]}.{profile.python.minor[1]}"


def glibc(profile: HostProfile) -> str | None:
    g = profile.os.glibc_version
    return f"{g[0]}.{g[1]}" if g else None


def torch_installable(profile: HostProfile, recipes: Recipes) -> str | None:
    """Why current torch cannot be installed here, or None."""
    if profile.os.system == "linux" and not at_least(glibc(profile), recipes.torch.linux_glibc_min):
        return (
            f"torch wheels need glibc >= {recipes.torch.linux_glibc_min} (manylinux_2_28) and this host "
            f"has {profile.os.libc or 'no glibc'}: use a newer distribution or a container"
        )
    return None


def decide_xinference(profile: HostProfile, recipes: Recipes, planned: set[str]) -> EngineOutcome:
    e = recipes.engine("xinference")
    if not at_least(py(profile), e["requires_python"]):
        return skip(
            "xinference",
            f"xinference {e['version']} needs Python >= {e['requires_python']}, "
            f"this environment has {profile.python.version}: use a newer Python",
        )
    blocked = torch_installable(profile, recipes)
    if blocked:
        return skip("xinference", f"xinference {e['version']} requires torch, and {blocked}")
    extras = [e["extra_for"][b] for b in ("transformers", "xllamacpp")
              if b in planned and b in e["extra_for"]]
    if profile.os.system == "darwin" and profile.os.arch == "arm64":
        extras.append(e["apple_silicon_extra"])
    spec = f"xinference[{','.join(extras)}]=={e['version']}" if extras else f"xinference=={e['version']}"
    why = [
        f"the platform; extras [{','.join(extras)}] fit the engines planned here"
        if extras
        else "the platform, no extras: no co-installable engine is planned"
    ]
    why.append("not [all] (image/audio/video stacks; and [all] lacks sglang)")
    if "vllm" in planned or "sglang" in planned:
        why.append(
            "not [vllm]/[sglang]: its click<8.2.0 pin cannot co-install with them, "
            "so they get their own environments"
        )
    return EngineOutcome(
        BackendDecision(
            "xinference", "install", "; ".join(why), (spec,), environment=PRIMARY_ENV, version=e["version"]
        ),
        extras=tuple(extras),
    )


def decide_transformers(profile: HostProfile, recipes: Recipes, torch: TorchChoice) -> EngineOutcome:
    e = recipes.engine("transformers")
    if not at_least(py(profile), "3.10"):
        return skip(
            "transformers",
            f"transformers {e['version']} needs Python >= 3.10, this environment has "
            f"{profile.python.version}",
        )
    blocked = torch_installable(profile, recipes)
    if blocked:
        return skip("transformers", blocked)
    if (
        torch.version_spec
        and torch.version_spec.startswith("==")
        and not at_least(torch.version_spec[2:], e["torch_min"])
    ):
        return skip(
            "transformers",
            f"transformers {e['version']} needs torch >= {e['torch_min']}, and the newest torch "
            f"for this platform is {torch.version_spec[2:]} ({torch.reason}); "
            "GGUF models run on llama.cpp here",
        )
    return EngineOutcome(
        BackendDecision(
            "transformers",
            "install",
            f"runs on torch {torch.variant}; {e['version']} is the newest transformers that co-installs "
            "with xinference 4.1.0 (click<8.2.0 keeps huggingface-hub < 1.31)",
            (f"transformers{_extras(e)}=={e['version']}",),
            environment=PRIMARY_ENV,
            version=e["version"],
        ),
    )


def _python_for(profile: HostProfile, e: dict, engine: str) -> tuple[str | None, str]:
    """None when the host's Python suits the engine's wheels, else the version its env is made with."""
    ok = at_least(py(profile), e["python_min"]) and vtuple(py(profile)) <= vtuple(e["python_max"])
    if ok:
        return None, ""
    return e["env_python"], (
        f"; Python {e['env_python']} for its environment ({engine} {e['version']} wheels need "
        f"{e['python_min']}-{e['python_max']}, the host has {py(profile)})"
    )


def _cuda_engine_gate(profile: HostProfile, e: dict, engine: str, glibc_floor: str) -> str | None:
    """Why a CUDA-only Linux engine cannot be installed here, or None."""
    if profile.os.system != "linux":
        return f"{engine} runs on Linux only (this is {profile.os.system}; on Windows use WSL2)"
    if not profile.nvidia_gpus:
        if profile.amd_gpus:
            return None  # the ROCm route decides
        return f"no NVIDIA GPU: {engine} needs CUDA on compute capability >= {e['sm_min'] / 10:.1f}"
    if profile.nvidia is None:
        cards = ", ".join(g.name for g in profile.nvidia_gpus)
        return f"{cards}: no NVIDIA driver answers: install it (>= {e['driver_min']})"
    if not at_least(glibc(profile), glibc_floor):
        return (
            f"{engine} {e['version']} wheels need glibc >= {glibc_floor} on {profile.os.arch}, this host has "
            f"{profile.os.libc or 'no glibc'}: use a newer distribution or a container"
        )
    known = [g for g in profile.nvidia_gpus if g.sm]
    usable = [g for g in known if g.sm >= e["sm_min"]]
    if known and not usable:
        cards = ", ".join(gpu_label(g) for g in known)
        return f"{cards}: {engine} {e['version']} needs compute capability >= {e['sm_min'] / 10:.1f}"
    if not at_least(profile.nvidia.driver_version, e["driver_min"]):
        cuda = profile.nvidia.cuda_driver_version or "12.x"
        return (
            f"{engine} {e['version']} is a CUDA 13 build and needs driver >= {e['driver_min']}; driver "
            f"{profile.nvidia.driver_version} runs CUDA <= {cuda}: upgrade the driver"
        )
    return None


def _cuda_engine_install(
    profile: HostProfile, recipes: Recipes, base: str, e: dict, name: str, what: str, env_reason: str
) -> EngineOutcome:
    """Install a CUDA engine (vLLM, SGLang) into its own environment, on the GPUs it can use."""
    torch, left = engine_torch(profile, recipes, base, e["torch_variant"], e["torch"], name)
    env_python, py_note = _python_for(profile, e, name)
    warnings = tuple(
        PlanWarning(
            "engine-gpu-left-out",
            f"{name} cannot use {gpu_label(g)} (needs compute capability "
            f">= {e['sm_min'] / 10:.1f}): hide it with CUDA_VISIBLE_DEVICES",
        )
        for g in left
    )
    used = [g for g in profile.nvidia_gpus if g not in left]
    return EngineOutcome(
        BackendDecision(
            name, "install",
            f"{', '.join(map(gpu_label, used))} on driver {profile.nvidia.driver_version}: {what}{py_note}",
            (f"{name}=={e['version']}",),
            environment=name, version=e["version"],
        ),
        warnings,
        torch=torch,
        env_python=env_python,
        env_reason=env_reason,
    )


def decide_vllm(profile: HostProfile, recipes: Recipes, base: str, by_name: bool = False) -> EngineOutcome:
    e = recipes.engine("vllm")
    if vllm_cpu.applies(profile):
        if by_name:
            return vllm_cpu.decide(profile, recipes, base)
        return skip("vllm", f"{_cuda_engine_gate(profile, e, 'vllm', '0')}{vllm_cpu.auto_note(recipes)}")
    floor = e["glibc_aarch64"] if profile.os.arch == "aarch64" else e["glibc_x86_64"]
    why_not = _cuda_engine_gate(profile, e, "vllm", floor)
    if (
        why_not
        and profile.nvidia
        and not at_least(profile.nvidia.driver_version, e["driver_min"])
        and "driver >=" in why_not
    ):
        why_not += f", or install a CUDA 12.9 build of vLLM yourself: {e['cuda12_hint']}"
    if why_not:
        return skip("vllm", why_not)
    if not profile.nvidia_gpus:
        return _vllm_rocm(profile, e)
    return _cuda_engine_install(
        profile, recipes, base, e, "vllm",
        f"the CUDA 13 wheel of vllm {e['version']} (torch=={e['torch']})",
        env_reason=(
            f"vllm {e['version']} pins torch=={e['torch']} and needs huggingface-hub >= 1.31 "
            "(click >= 8.4.2): "
            "it cannot share xinference 4.1.0's environment (click<8.2.0) nor sglang's (torch==2.14.1)"
        ),
    )


def _vllm_rocm(profile: HostProfile, e: dict) -> EngineOutcome:
    gfx = sorted({g.gfx for g in profile.amd_gpus if g.gfx})
    supported = [g for g in gfx if g in e["rocm_gfx"]]
    if not supported:
        return skip(
            "vllm",
            f"{', '.join(gfx) or 'this AMD GPU'}: not a GPU vLLM's ROCm wheels support "
            f"({', '.join(e['rocm_gfx'])})",
        )
    return skip(
        "vllm",
        f"{', '.join(supported)}: vLLM's ROCm wheels (Python {e['rocm_python']} only, glibc >= "
        f"{e['rocm_glibc']}, their own bundled torch) come from {e['rocm_index']}, not PyPI; not planned "
        "automatically: install them into a Python 3.12 environment following vLLM's ROCm guide",
    )


def decide_sglang(profile: HostProfile, recipes: Recipes, base: str) -> EngineOutcome:
    e = recipes.engine("sglang")
    why_not = _cuda_engine_gate(profile, e, "sglang", e["glibc"])
    if why_not:
        return skip("sglang", why_not)
    if not profile.nvidia_gpus:
        return skip(
            "sglang", "AMD GPU: SGLang's ROCm builds ship as Docker images, there is no ROCm wheel on PyPI"
        )
    return _cuda_engine_install(
        profile, recipes, base, e, "sglang",
        f"sglang {e['version']} (torch=={e['torch']}, CUDA 13)",
        env_reason=(
            f"sglang {e['version']} pins torch=={e['torch']} (vllm 0.33.0 pins 2.14.0) and needs "
            "huggingface-hub >= 1.31, which xinference 4.1.0's click<8.2.0 excludes"
        ),
    )


def _compiler_problem(profile: HostProfile) -> str | None:
    cc = profile.toolchain.cc
    system = profile.os.system
    if not cc:
        fix = {
            "linux": "install gcc/g++ (e.g. apt install build-essential)",
            "darwin": "install the command line tools (xcode-select --install)",
            "windows": "install Visual Studio Build Tools with C++",
        }.get(system, "install a C++ compiler")
        return f"llama-cpp-python is a source build and no C/C++ compiler was found: {fix}"
    if cc.startswith("gcc") and vtuple(cc)[:1] < (9,):
        return (
            f"llama-cpp-python is a source build and {cc} is too old for llama.cpp's C++17: "
            "install gcc >= 9 (e.g. devtoolset-11 / gcc-toolset-12)"
        )
    return None


def _extras(engine: dict) -> str:
    extras = engine.get("extras") or []
    return f"[{','.join(extras)}]" if extras else ""


def decide_llama_cpp_python(
    profile: HostProfile, recipes: Recipes, user_cmake_args: str | None, portable: bool
) -> EngineOutcome:
    version = recipes.version("llama-cpp-python")
    build = llama_build(profile, recipes.llama_cpp, version, user_cmake_args, portable)
    problem = _compiler_problem(profile)
    if problem:
        return skip("llama-cpp-python", problem, *build.warnings)
    spec: BuildSpec = build.spec
    env = {"CMAKE_ARGS": " ".join(spec.cmake_args), "FORCE_CMAKE": "1"}
    return EngineOutcome(
        BackendDecision(
            "llama-cpp-python",
            "install",
            f"source build of {version} (PyPI has only the sdist): {build.reason}",
            (f"llama-cpp-python{_extras(recipes.engine('llama-cpp-python'))}=={version}",),
            env=env,
            environment=PRIMARY_ENV,
            version=version,
            build=spec,
        ),
        build.warnings,
    )


def decide_xllamacpp(profile: HostProfile, recipes: Recipes) -> EngineOutcome:
    """xllamacpp: always installed where its wheels fit; the GPU index only where it runs every GPU.

    Order: macOS -> PyPI (Metal on Apple Silicon); NVIDIA GPUs -> the newest CUDA index that has
    code every GPU can run with this driver, else PyPI's CPU wheel with a warning; AMD GPUs on
    Linux -> the newest ROCm index for the host's ROCm that lists every GPU's gfx, else CPU.
    """
    e = recipes.engine("xllamacpp")
    v = e["version"]
    if not at_least(py(profile), "3.10"):
        return skip(
            "xllamacpp",
            f"xllamacpp wheels are cp310-abi3: Python >= 3.10 needed, this environment has "
            f"{profile.python.version}",
        )
    if profile.os.system == "linux" and not at_least(glibc(profile), "2.17"):
        return skip(
            "xllamacpp",
            f"xllamacpp wheels are manylinux2014 (glibc >= 2.17); this host has "
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
    index = f"{e['gpu_index_base']}/{choice.index}" if choice.index else None
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


@dataclass(frozen=True)
class _CudaWheel:
    """One CUDA index of xllamacpp (recipes/engines.toml [[xllamacpp.cuda]])."""

    index: str
    cuda: str
    driver_linux: str
    driver_windows: str
    sass: tuple[int, ...]  # native code, runs on exactly that arch
    ptx: tuple[int, ...]  # PTX only: JIT onto arch >= it, when the driver supports `cuda`


def _cpu_wheel(why: str, fix: str) -> _XllamaChoice:
    msg = f"xllamacpp: {why}: {fix}"
    return _XllamaChoice(
        None, f"CPU wheel from PyPI: {why}: {fix}", (PlanWarning("xllamacpp-cpu-wheel", msg),)
    )


def _labels(gpus) -> list[str]:
    return list(dict.fromkeys(gpu_label(g) for g in gpus))


def _driver_cuda(driver: NvidiaDriver, table: list) -> str | None:
    """The CUDA version the driver supports natively: as reported, else its driver branch's.

    NVML's cudaDriverGetVersion / nvidia-smi's "CUDA Version: 13.1" is the profile's
    cuda_driver_version; a profile read from /proc has only "590.48.01", hence the table.
    """
    if driver.cuda_driver_version:
        return driver.cuda_driver_version
    branch = vtuple(driver.driver_version)[:1]
    return next((cuda for floor, cuda in table if branch and branch[0] >= int(floor)), None)


def _branch_for_cuda(cuda: str, table: list) -> str | None:
    """The oldest driver branch that natively supports CUDA `cuda` (13.2 -> 595)."""
    fits = [int(floor) for floor, c in table if at_least(c, cuda)]
    return str(min(fits)) if fits else None


def _how_it_runs(sm: int, w: _CudaWheel) -> str:
    if sm in w.sass:
        return "native code"
    return f"compute_{max(p for p in w.ptx if p <= sm)} PTX through the driver's JIT"


def _wheel_problems(
    w: _CudaWheel, gpus, driver: str, driver_cuda: str | None, system: str, table: list
) -> tuple[list[str], str | None]:
    """Why this index cannot run every GPU here, and the driver that would fix it (None: none)."""
    problems: list[str] = []
    needs = []
    floor = w.driver_windows if system == "windows" else w.driver_linux
    if not at_least(driver, floor):
        problems.append(f"driver {driver} is older than its floor {floor}")
        needs.append(floor)
    fixable = True
    for label, sm in dict.fromkeys((gpu_label(g), g.sm) for g in gpus):
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


def _xllamacpp_cuda(profile: HostProfile, e: dict) -> _XllamaChoice:
    gpus = profile.nvidia_gpus
    names = ", ".join(_labels(gpus))
    if profile.nvidia is None:
        return _cpu_wheel(
            f"{names}: no NVIDIA driver answers", "install the driver and plan again for a CUDA wheel"
        )
    platform = f"{profile.os.system}-{profile.os.arch}"
    if platform not in e["cuda_platforms"]:
        return _cpu_wheel(
            f"xllamacpp's CUDA wheels are for {', '.join(e['cuda_platforms'])}, not {platform}",
            "llama-cpp-python's source build can use the GPU",
        )
    if profile.os.system == "linux" and not at_least(glibc(profile), e["cuda_glibc_min"]):
        return _cpu_wheel(
            f"xllamacpp's CUDA wheels need glibc >= {e['cuda_glibc_min']} and this host has "
            f"{profile.os.libc or 'no glibc'}, so {names} is not used",
            "use a newer distribution (e.g. Ubuntu 22.04+) or a container for the GPU build",
        )
    driver = profile.nvidia.driver_version
    table = e["driver_cuda"]
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
    for raw in e["cuda"]:
        w = _CudaWheel(**{**raw, "sass": tuple(raw["sass"]), "ptx": tuple(raw["ptx"])})
        problems, fix = _wheel_problems(w, known, driver, driver_cuda, profile.os.system, table)
        if problems:
            rejected.append(f"not {w.index}: {'; '.join(problems)}")
            if fix:
                fixes.append((fix, w.index))
            continue
        runs = "; ".join(
            f"{label} runs its {_how_it_runs(sm, w)}"
            for label, sm in dict.fromkeys((gpu_label(g), g.sm) for g in known)
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


def _xllamacpp_rocm(profile: HostProfile, e: dict) -> _XllamaChoice:
    gpus = profile.amd_gpus
    names = ", ".join(dict.fromkeys(f"{g.name} ({g.gfx or 'gfx unknown'})" for g in gpus))
    rocm = profile.rocm.version if profile.rocm else None
    have = f"ROCm {rocm}" if rocm else "no ROCm"
    if not at_least(glibc(profile), e["rocm_glibc_min"]):
        return _cpu_wheel(
            f"xllamacpp's ROCm wheels need glibc >= {e['rocm_glibc_min']} and this host has "
            f"{profile.os.libc or 'no glibc'}, so {names} is not used",
            "use a newer distribution (e.g. Ubuntu 22.04+) or a container for the GPU build",
        )
    gfx = list(dict.fromkeys(g.gfx for g in gpus if g.gfx))
    rejected: list[str] = []
    for w in e["rocm"]:
        problems = []
        if not at_least(rocm, w["rocm_min"]):
            problems.append(f"it is for ROCm >= {w['rocm_min']} and this host has {have}")
        missing = [x for x in gfx if x not in w["gfx"]]
        if missing:
            problems.append(f"it has no kernels for {', '.join(missing)} (no JIT on ROCm)")
        if problems:
            rejected.append(f"not {w['index']}: {' and '.join(problems)}")
            continue
        why = f"{w['index']} wheel from xllamacpp's GPU index ({have}): kernels for {names}"
        return _XllamaChoice(w["index"], "; ".join([why, *rejected]))
    return _cpu_wheel(
        f"no xllamacpp ROCm wheel runs {names} with {have} ({'; '.join(rejected)})",
        "install the ROCm version of a wheel that lists the GPU, or build llama.cpp from source",
    )
