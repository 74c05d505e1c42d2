"""Requirement strings of a plan, read with packaging: names, exact pins, extras, one pin per project."""

from __future__ import annotations

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from provision.errors import OperationFailed


def requirement_name(req: str) -> str | None:
    """The canonical project name of a requirement string; None when it does not parse."""
    try:
        return canonicalize_name(Requirement(req).name)
    except InvalidRequirement:
        return None


def requirement_for(packages: tuple[str, ...], name: str) -> Requirement | None:
    """The requirement for distribution `name` among a backend's packages."""
    for p in packages:
        try:
            r = Requirement(p)
        except InvalidRequirement:
            continue
        if canonicalize_name(r.name) == canonicalize_name(name):
            return r
    return None


def pinned_version(packages: tuple[str, ...], name: str) -> str:
    """The exact (==) version the packages give `name`; OperationFailed when there is none."""
    r = requirement_for(packages, name)
    pins = [s.version for s in r.specifier if s.operator == "=="] if r else []
    if not pins:
        raise OperationFailed(f"{name}: the plan gives no exact version to build")
    return pins[0]


def extras_of(packages: tuple[str, ...], name: str) -> str:
    """The extras the packages ask of `name`, as "[a,b]" ("" for none)."""
    r = requirement_for(packages, name)
    return "[" + ",".join(sorted(r.extras)) + "]" if r and r.extras else ""


def merge_pins(pins: list[str]) -> list[str]:
    """One pin per project, the first given winning (torch pins come before replay pins)."""
    seen: dict[str, str] = {}
    for p in pins:
        n = requirement_name(p)
        if n and n not in seen:
            seen[n] = p
    return list(seen.values())


def local_tag(version: str) -> str | None:
    """A version's local label, the build tag ('2.9.1+cu128' -> 'cu128'); None without one or
    for a version that is not PEP 440."""
    try:
        return Version(version).local
    except InvalidVersion:
        return None
