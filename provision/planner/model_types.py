"""Model types beyond LLMs (`--model-types llm,embedding,rerank,image,audio,video` or `all`).

Xinference serves embedding, rerank, image, audio and video models next to LLMs through its
extras. The seed's `xinference[all]` would take every one of them, and with them vLLM,
PyPI's CPU xllamacpp and Apple-only MLX stacks: this module takes only the extras of the
types asked for, where the hardware and the planned torch allow them, and says why for each
one it leaves out. Pure: the decision for xinference, the profile and recipes in; a new
decision out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, get_args

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from provision.errors import UserError
from provision.plan import PlanWarning, TorchChoice

if TYPE_CHECKING:  # engines imports the planner's pieces; only its type is needed here
    from provision.planner.engines import EngineOutcome

ModelType = Literal["llm", "embedding", "rerank", "image", "audio", "video"]
MODEL_TYPES: tuple[str, ...] = get_args(ModelType)
DEFAULT_MODEL_TYPES: tuple[str, ...] = ("llm",)


def parse_model_types(text: str | None) -> tuple[str, ...]:
    """`llm,embedding` -> ("llm", "embedding"); `all` -> every type; None -> LLMs only."""
    if text is None:
        return DEFAULT_MODEL_TYPES
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError("--model-types is empty: name one or more of " + ", ".join(MODEL_TYPES) + " (or all)")
    if "all" in names:
        return MODEL_TYPES
    unknown = [n for n in names if n not in MODEL_TYPES]
    if unknown:
        raise UserError(f"unknown model type '{unknown[0]}' (choose from {', '.join(MODEL_TYPES)}, or all)")
    # Kept in the canonical order, so the same set always makes the same plan.
    return tuple(t for t in MODEL_TYPES if t in names)


@dataclass(frozen=True)
class TypeOutcome:
    name: str
    extra: str | None  # the xinference extra taken, None when skipped
    reason: str


def _pulls(t: dict[str, Any]) -> str:
    return ", ".join(t.get("requires", ()))


def _companion_gap(t: dict[str, Any], torch: TorchChoice) -> str | None:
    """Why no build of the type's torch companion (torchaudio) matches the planned torch, or None."""
    latest = t.get("companion_latest")
    if not latest:
        return None
    major, minor = Version(latest).release[:2]
    first_without = f"{major}.{minor + 1}.0"
    try:
        newer_allowed = torch.version_spec is None or SpecifierSet(torch.version_spec).contains(first_without)
    except InvalidSpecifier:
        newer_allowed = True
    if not newer_allowed:
        return None
    return (
        f"{t['torch_companion']}'s newest release series is {latest}, built for torch {latest}, and this "
        f"plan's torch ({torch.variant}{torch.version_spec or ', newest'}) may be newer: a "
        f"{t['torch_companion']} built for another torch fails to load its ops (the resolver does not "
        f"see that); serve these models from an environment with torch {latest}"
    )


def decide_types(
    asked: tuple[str, ...], recipe: Mapping[str, Any], torch: TorchChoice, xinference_ok: str | None
) -> list[TypeOutcome]:
    """One outcome per non-LLM type asked for. xinference_ok: None, or why xinference is skipped."""
    out = []
    for name in asked:
        if name == "llm":
            continue
        t = recipe["types"][name]
        if xinference_ok is not None:
            why = f"{name}: Xinference itself is not installed ({xinference_ok})"
            out.append(TypeOutcome(name, None, why))
            continue
        gap = _companion_gap(t, torch)
        if gap:
            out.append(TypeOutcome(name, None, f"{name}: [{t['extra']}] not taken: {gap}"))
            continue
        why = f"{name}: [{t['extra']}] for {t['what']}: {_pulls(t)}"
        if t.get("torch_companion"):
            source = f"from {torch.index_url}" if torch.index_url else "from the same index as torch"
            why += f"; {t['torch_companion']} is held to the {torch.variant} build of torch ({source})"
        out.append(TypeOutcome(name, t["extra"], why))
    return out


def not_all_reason(recipe: Mapping[str, Any], xinference: Mapping[str, Any], taken: list[str]) -> str:
    """What `xinference[all]` would have pulled, and why it is not taken as it is."""
    all_extras = recipe["all_extras"]
    parts = [
        f"[{x}] {why.format(**xinference)}" for x, why in recipe["not_from_all"].items() if x in all_extras
    ]
    left = [x for x in all_extras if x not in taken and x not in recipe["not_from_all"]]
    if left:
        parts.append(f"[{','.join(left)}] not asked for (--model-types)")
    return f"not [all] (= [{','.join(all_extras)}] in xinference {xinference['version']}): " + "; ".join(
        parts
    )


def apply(
    decision: EngineOutcome,
    asked: tuple[str, ...],
    recipe: Mapping[str, Any],
    xinference: Mapping[str, Any],
    torch: TorchChoice,
) -> EngineOutcome:
    """The xinference decision with the asked model types' extras added, their reasons and skips.

    `decision` is provision.planner.engines.Decision; a skipped xinference gets each asked type
    skipped with its reason (as warnings) and is otherwise unchanged.
    """
    backend = decision.backend
    skipped_why = backend.reason if backend.action != "install" else None
    outcomes = decide_types(asked, recipe, torch, skipped_why)
    warnings = tuple(PlanWarning("model-type-skipped", o.reason) for o in outcomes if o.extra is None)
    if backend.action != "install":
        return replace(decision, warnings=(*decision.warnings, *warnings))
    extras = [*decision.extras, *(o.extra for o in outcomes if o.extra)]
    version = backend.version
    spec = f"xinference[{','.join(extras)}]=={version}" if extras else f"xinference=={version}"
    # decide_xinference's own "not [all]" clause is replaced by the one made from the recipe.
    own = [p for p in backend.reason.split("; ") if not p.startswith("not [all]")]
    reason = "; ".join([*own, *(o.reason for o in outcomes), not_all_reason(recipe, xinference, extras)])
    packages = (spec, *backend.packages[1:])
    return replace(
        decision,
        backend=replace(backend, packages=packages, reason=reason),
        warnings=(*decision.warnings, *warnings),
        extras=tuple(extras),
    )


def leave_out_llm(name: str) -> EngineOutcome:
    """An LLM engine's decision when --model-types does not ask for LLMs."""
    from provision.planner.engines import skip

    return skip(name, "not asked for: --model-types has no llm")
