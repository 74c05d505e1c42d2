"""The backends a plan may install: one typed record each, read from recipes/backends.toml.

This is the registry every layer asks (plan, install, verify, receipt, engines, serve): a
backend is added by one table in the TOML and, when it serves models, one adapter class.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from provision.errors import OperationFailed, UserError

RECIPE = "backends.toml"
EnvironmentRule = Literal["primary", "own"]
_ENVIRONMENT_RULES: tuple[EnvironmentRule, ...] = ("primary", "own")


@dataclass(frozen=True)
class BackendRecipe:
    """What every backend has (recipes/backends.toml explains each key)."""

    name: str
    version: str
    dist: str
    import_check: str
    disk_mb: int
    environment: EnvironmentRule
    needs_torch: bool
    extras: tuple[str, ...] = ()
    xinference_engine: str | None = None
    adapter: str | None = None
    python_min: str | None = None  # the oldest Python its wheels install on
    # The rest of the table: facts only the planner's rule for this backend reads.
    rules: Mapping[str, Any] = field(default_factory=dict)

    @property
    def requirement(self) -> str:
        """dist[extras]==version: what a plan installs when nothing narrows it."""
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        return f"{self.dist}{extras}=={self.version}"


_COMMON = (
    "version",
    "dist",
    "import_check",
    "disk_mb",
    "environment",
    "needs_torch",
    "extras",
    "xinference_engine",
    "adapter",
    "python_min",
)


def read_recipe_text(name: str) -> str:
    """A recipes/*.toml file as shipped in the package (provision.recipes), or from the checkout
    when provision runs from its source tree uninstalled (recipes/ becomes provision.recipes
    only through the package-dir mapping in pyproject)."""
    try:
        try:
            folder = resources.files("provision.recipes")
        except ModuleNotFoundError:
            folder = resources.files("provision").joinpath("..").joinpath("recipes")
        return folder.joinpath(name).read_text(encoding="utf-8")
    except OSError as e:
        raise OperationFailed(f"recipes/{name} cannot be read: {e}") from None


def recipes_from_table(tables: Mapping[str, Any]) -> tuple[BackendRecipe, ...]:
    """Typed records from backends.toml's tables; OperationFailed names the first bad entry.

    A table without `dist` is not a backend but planner facts of one (a variant such as a CPU
    build of a GPU engine); the planner reads it by name."""
    out = []
    for name, t in tables.items():
        if "dist" not in t:
            continue
        try:
            env = t["environment"]
            if env not in _ENVIRONMENT_RULES:
                raise TypeError(f"environment must be one of {', '.join(_ENVIRONMENT_RULES)}, not {env!r}")
            out.append(
                BackendRecipe(
                    name=name,
                    version=str(t["version"]),
                    dist=str(t["dist"]),
                    import_check=str(t["import_check"]),
                    disk_mb=int(t["disk_mb"]),
                    environment=env,
                    needs_torch=bool(t["needs_torch"]),
                    extras=tuple(t.get("extras") or ()),
                    xinference_engine=t.get("xinference_engine"),
                    adapter=t.get("adapter"),
                    python_min=t.get("python_min"),
                    rules={k: v for k, v in t.items() if k not in _COMMON},
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            raise OperationFailed(f"recipes/{RECIPE} [{name}]: missing or malformed entry ({e})") from None
    return tuple(out)


@cache
def backend_tables() -> Mapping[str, Any]:
    """recipes/backends.toml as parsed (the planner reads its engine-specific rules from here)."""
    try:
        return tomllib.loads(read_recipe_text(RECIPE))
    except tomllib.TOMLDecodeError as e:
        raise OperationFailed(f"recipes/{RECIPE} cannot be read: {e}") from None


@cache
def registry() -> tuple[BackendRecipe, ...]:
    """Every backend, in the order plans list them in."""
    return recipes_from_table(backend_tables())


def names() -> tuple[str, ...]:
    return tuple(b.name for b in registry())


def backend(name: str) -> BackendRecipe:
    check_known([name])
    return next(b for b in registry() if b.name == name)


def check_known(asked: Iterable[str], among: Iterable[str] | None = None) -> None:
    """UserError (exit 2) for the first name that is not a backend (of `among`, default: all)."""
    allowed = tuple(among) if among is not None else names()
    unknown = [b for b in asked if b not in allowed]
    if unknown:
        raise UserError(f"unknown backend '{unknown[0]}' (choose from {', '.join(allowed)})")
