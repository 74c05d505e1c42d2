"""The engine-choice data (recipes/serve_engines.toml), typed."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE = "serve_engines.toml"


@dataclass(frozen=True)
class GpuEngineRule:
    name: str
    systems: tuple[str, ...]
    needs_cuda: bool
    formats: dict[str, tuple[str, ...]]  # model format -> accepted quantizations


@dataclass(frozen=True)
class FamilyRule:
    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    vocab_sizes: tuple[int, ...]  # empty: any
    engines: tuple[str, ...]


@dataclass(frozen=True)
class ServeRules:
    gpu_engines: tuple[GpuEngineRule, ...]  # in order of preference
    families: tuple[FamilyRule, ...]  # first match wins


def rules_from_dict(d: dict[str, Any]) -> ServeRules:
    engines = tuple(
        GpuEngineRule(
            name=name,
            systems=tuple(e["systems"]),
            needs_cuda=bool(e["needs_cuda"]),
            formats={fmt: tuple(qs) for fmt, qs in e["formats"].items()},
        )
        for name, e in d["engines"].items()
    )
    families = tuple(
        FamilyRule(
            name=f["name"],
            architectures=tuple(f.get("architectures", ())),
            model_types=tuple(f.get("model_types", ())),
            vocab_sizes=tuple(f.get("vocab_sizes", ())),
            engines=tuple(f.get("engines", ())),
        )
        for f in d["families"]
    )
    return ServeRules(gpu_engines=engines, families=families)


def load_serve_rules() -> ServeRules:
    text = resources.files("provision.recipes").joinpath(RECIPE).read_text(encoding="utf-8")
    return rules_from_dict(tomllib.loads(text))
