"""`--pin NAME==VERSION` and `--latest`: plan against releases the recipes do not hold yet.

The asked release's facts are derived live from the index exactly as scripts/refresh-recipes
derives them (provision.planner.derive), and the plan is made from recipes with those facts
in place of the written ones; everything else is the recipes' as written. The plan then says,
per backend, which facts were re-derived and which were assumed. A pinned release that cannot
be planned (a conflict, a dropped wheel, a fact only a human can re-read) is refused with the
reason; under --latest such a backend keeps its recipe version, with a warning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

from provision.errors import UserError
from provision.plan import PlanWarning
from provision.planner.derive import Derivation, derive_backend
from provision.planner.index_meta import PYPI_SIMPLE, IndexView
from provision.planner.recipes import Recipes, XllamacppRecipes


@dataclass(frozen=True)
class LivePins:
    recipes: Recipes
    warnings: tuple[PlanWarning, ...]
    derivations: tuple[Derivation, ...]


def parse_pins(pins: Sequence[str], known: Sequence[str]) -> dict[str, str]:
    """{'vllm': '0.34.0'} from ('vllm==0.34.0',); UserError (exit 2) for anything else."""
    out: dict[str, str] = {}
    for p in pins:
        name, sep, version = p.partition("==")
        name, version = name.strip(), version.strip()
        if not sep or not name or not version:
            raise UserError(f"--pin {p!r}: write it as NAME==VERSION (e.g. vllm==0.34.0)")
        if name not in known:
            raise UserError(f"--pin {p!r}: unknown backend '{name}' (choose from {', '.join(known)})")
        try:
            Version(version)
        except InvalidVersion:
            raise UserError(f"--pin {p!r}: {version!r} is not a version") from None
        out[name] = version
    return out


def _summary(d: Derivation, label: str) -> str:
    changed = [f"{f.key} {f.old} -> {f.new}" for f in d.changed if f.key != "version"]
    same = [f.key for f in d.facts if not f.changed]
    parts = [f"{d.backend} {d.version} resolved live from {label}"]
    parts.append(f"re-derived: {'; '.join(changed) or 'no fact differs from the recipes'}")
    if same:
        parts.append(f"re-derived unchanged: {', '.join(same)}")
    if d.assumed:
        parts.append(f"assumed from recipes/backends.toml (not in its metadata): {', '.join(d.assumed)}")
    return "; ".join(parts)


def apply_derivations(recipes: Recipes, derivations: Sequence[Derivation]) -> Recipes:
    """Recipes with each derivation's facts in place of the written ones."""
    engines: dict[str, Any] = {k: dict(v) for k, v in recipes.engines.items()}
    for d in derivations:
        for f in d.facts:
            engines[f.table][f.key] = f.new
    return dataclasses.replace(
        recipes, engines=engines, xllamacpp=XllamacppRecipes.from_table(engines["xllamacpp"])
    )


def live_recipes(
    recipes: Recipes,
    pins: Mapping[str, str],
    latest: Sequence[str],
    index_url: str | None,
    uv: str,
) -> LivePins:
    """Recipes for the pinned (exact) and latest (newest on the index) backends, and what the
    plan must say about them. Raises UserError naming the reason a pin cannot be planned."""
    view = IndexView(index_url or PYPI_SIMPLE, uv, recipes)
    asked = dict(pins)
    for name in latest:
        asked.setdefault(name, "")
    if "xinference" in asked and "transformers" in recipes.engines:
        # transformers is planned at the newest release that co-installs with xinference: a
        # different xinference re-derives it too.
        asked.setdefault("transformers", "")
    # Xinference first: transformers' newest co-installing release depends on it.
    order = sorted(asked, key=lambda n: n != "xinference")
    done: list[Derivation] = []
    warnings: list[PlanWarning] = []
    xinference: str | None = pins.get("xinference")
    for name in order:
        table = recipes.engine(name)
        wanted = asked[name]
        if wanted == str(table["version"]):
            continue  # the recipes hold this release: their facts stand
        d = derive_backend(view, name, table, Version(wanted) if wanted else None, xinference=xinference)
        if d.blockers:
            if wanted:
                raise UserError(f"--pin {name}=={wanted} cannot be planned: {'; '.join(d.blockers)}")
            warnings.append(
                PlanWarning(
                    "live-pin-kept",
                    f"{name}: the newest release ({d.version}) on {view.label} cannot be planned "
                    f"({'; '.join(d.blockers)}): planned {table['version']} from the recipes",
                )
            )
            continue
        if d.version == str(table["version"]):
            continue
        if name == "xinference":
            xinference = d.version
        done.append(d)
        warnings.append(PlanWarning("live-pin", _summary(d, view.label)))
    return LivePins(apply_derivations(recipes, done), tuple(warnings), tuple(done))
