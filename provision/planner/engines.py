"""One decision per backend: install (where, which version, why) or skip (why, and what to do).

Each function is pure: profile and recipes in, an EngineOutcome out. Which environment an engine
goes into is decided here too, because the reason is a fact about its pins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from provision.backends import RECIPE as BACKENDS_RECIPE
from provision.backends import BackendRecipe
from provision.plan import PRIMARY_ENV, BackendDecision, BuildSpec, PlanWarning, TorchChoice
from provision.planner import vllm_cpu
from provision.planner.cmake import llama_build
from provision.planner.recipes import EngineTable, Recipes
from provision.planner.torch_choice import engine_torch, gpu_label
from provision.planner.versions import at_least, vtuple
from provision.profile import HostProfile


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
    extras = [
        e["extra_for"][b] for b in ("transformers", "xllamacpp") if b in planned and b in e["extra_for"]
    ]
    if profile.os.system == "darwin" and profile.os.arch == "arm64":
        extras.append(e["apple_silicon_extra"])
    spec = f"xinference[{','.join(extras)}]=={e['version']}" if extras else f"xinference=={e['version']}"
    why = [
        f"the platform; extras [{','.join(extras)}] fit the engines planned here"
        if extras
        else "the platform, no extras: no co-installable engine is planned"
    ]
    # What [all] would pull and why not: provision.planner.model_types, from its recipe.
    if "vllm" in planned or "sglang" in planned:
        why.append(
            f"not [vllm]/[sglang]: its {e['click_pin']} pin cannot co-install with them, "
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
    if not at_least(py(profile), e["python_min"]):
        return skip(
            "transformers",
            f"transformers {e['version']} needs Python >= {e['python_min']}, this environment has "
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
            f"with xinference {_xinference_keeps_hub_low(recipes)}",
            (f"transformers{_extras(e)}=={e['version']}",),
            environment=PRIMARY_ENV,
            version=e["version"],
        ),
    )


def _xinference_keeps_hub_low(recipes: Recipes) -> str:
    x = recipes.engine("xinference")
    return f"{x['version']} ({x['click_pin']} keeps huggingface-hub < {x['hub_ceiling']})"


def _python_for(profile: HostProfile, e: EngineTable, engine: str) -> tuple[str | None, str]:
    """None when the host's Python suits the engine's wheels, else the version its env is made with."""
    ok = at_least(py(profile), e["python_min"]) and vtuple(py(profile)) <= vtuple(e["python_max"])
    if ok:
        return None, ""
    return e["env_python"], (
        f"; Python {e['env_python']} for its environment ({engine} {e['version']} wheels need "
        f"{e['python_min']}-{e['python_max']}, the host has {py(profile)})"
    )


def _cuda_engine_gate(profile: HostProfile, e: EngineTable, engine: str, glibc_floor: str) -> str | None:
    """Why a CUDA-only Linux engine cannot be installed here, or None."""
    if profile.os.system != "linux":
        # vllm-project/vllm#3425, xorbitsai/inference#2990: the advice differs by system.
        advice = {
            "windows": "use WSL2 (a Linux distribution with the Windows NVIDIA driver's CUDA)",
            "darwin": "on Apple Silicon Xinference serves with its MLX engine (planned with xinference[mlx])"
            if profile.os.arch == "arm64"
            else "an Intel Mac has no GPU engine; llama.cpp runs on its CPU",
        }.get(profile.os.system, "use a Linux host")
        return f"{engine} runs on Linux only (this is {profile.os.system}): {advice}"
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
    profile: HostProfile, recipes: Recipes, base: str, e: EngineTable, name: str, what: str, env_reason: str
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
    driver = profile.nvidia.driver_version if profile.nvidia else "unknown"  # the gate passed: known
    return EngineOutcome(
        BackendDecision(
            name,
            "install",
            f"{', '.join(map(gpu_label, used))} on driver {driver}: {what}{py_note}",
            (f"{name}=={e['version']}",),
            environment=name,
            version=e["version"],
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
        why_not += f", or install a CUDA {e['cuda12_build']} build of vLLM yourself: {e['cuda12_hint']}"
    if why_not:
        return skip("vllm", why_not)
    if not profile.nvidia_gpus:
        return _vllm_rocm(profile, e)
    x = recipes.engine("xinference")
    return _cuda_engine_install(
        profile,
        recipes,
        base,
        e,
        "vllm",
        f"the CUDA {e['wheel_cuda']} wheel of vllm {e['version']} (torch=={e['torch']})",
        env_reason=(
            f"vllm {e['version']} pins torch=={e['torch']} and needs huggingface-hub >= {x['hub_ceiling']} "
            f"(click >= {x['hub_click_min']}): it cannot share xinference {x['version']}'s environment "
            f"({x['click_pin']}) nor sglang's (torch=={recipes.engine('sglang')['torch']})"
        ),
    )


def _vllm_rocm(profile: HostProfile, e: EngineTable) -> EngineOutcome:
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
        f"automatically: install them into a Python {e['rocm_python']} environment following vLLM's ROCm "
        "guide",
    )


def decide_sglang(profile: HostProfile, recipes: Recipes, base: str) -> EngineOutcome:
    e = recipes.engine("sglang")
    why_not = _cuda_engine_gate(profile, e, "sglang", e["glibc"])
    if why_not:
        return skip("sglang", why_not)
    x, v = recipes.engine("xinference"), recipes.engine("vllm")
    if not profile.nvidia_gpus:
        return skip(
            "sglang", "AMD GPU: SGLang's ROCm builds ship as Docker images, there is no ROCm wheel on PyPI"
        )
    return _cuda_engine_install(
        profile,
        recipes,
        base,
        e,
        "sglang",
        f"sglang {e['version']} (torch=={e['torch']}, CUDA {e['wheel_cuda']})",
        env_reason=(
            f"sglang {e['version']} pins torch=={e['torch']} (vllm {v['version']} pins {v['torch']}) and "
            f"needs huggingface-hub >= {x['hub_ceiling']}, which xinference {x['version']}'s "
            f"{x['click_pin']} excludes"
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


def _extras(engine: EngineTable) -> str:
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


def decide_pinned(
    profile: HostProfile, recipes: Recipes, backend: BackendRecipe, torch: TorchChoice
) -> EngineOutcome:
    """A backend with no rule of its own: its recipe's pin, where its environment rule puts it."""
    if backend.python_min and not at_least(py(profile), backend.python_min):
        return skip(
            backend.name,
            f"{backend.name} {backend.version} needs Python >= {backend.python_min}, "
            f"this environment has {profile.python.version}",
        )
    if backend.needs_torch:
        blocked = torch_installable(profile, recipes)
        if blocked:
            return skip(backend.name, f"{backend.name} {backend.version} requires torch, and {blocked}")
    why = f"{backend.name} {backend.version}, as recipes/{BACKENDS_RECIPE} pins it"
    if backend.environment == "primary":
        return EngineOutcome(
            BackendDecision(
                backend.name,
                "install",
                f"{why}; co-installs with xinference",
                (backend.requirement,),
                environment=PRIMARY_ENV,
                version=backend.version,
            )
        )
    return EngineOutcome(
        BackendDecision(
            backend.name,
            "install",
            why,
            (backend.requirement,),
            environment=backend.name,
            version=backend.version,
        ),
        torch=torch if backend.needs_torch else None,
        env_reason=f"{backend.name}: its own environment (its pins do not co-install with xinference)",
    )
