"""Before anything changes: is every exact pin of the plan on the indexes it will be installed from?

A partial mirror (xorbitsai/inference#894, #1149) otherwise fails half-way through an install,
after environments were created and packages replaced, with a resolver message that names
whatever it tried last. Here each `name==version` pin of the plan is looked up on the configured
indexes (and the backend's or torch's own extra index), and the missing ones are named at once.

An index that does not answer (network, TLS) proves nothing, so a pin only it could have served
is not reported; an index that answers 404 for a project does not have it.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from provision.errors import OperationFailed
from provision.install import index_pages
from provision.install.pipconfig import PYPI_SIMPLE, IndexConfig
from provision.install.torch_source import PypiDefault, pypi_default_build, pypi_defaults
from provision.plan import Plan
from provision.redact import strip_userinfo

Listing = Literal["listed", "absent", "unknown"]


@dataclass(frozen=True)
class Pin:
    project: str
    version: str
    sources: tuple[str, ...]  # the indexes this pin may come from, in order


def _exact(req: str) -> tuple[str, str] | None:
    """`xinference[transformers]==4.1.0` -> ("xinference", "4.1.0"); None for a range or a URL."""
    name, sep, version = req.partition("==")
    if not sep or any(c in version for c in ",;<>!= ") or "@" in name:
        return None
    return canonicalize_name(name.split("[")[0].strip()), version.strip()


def plan_pins(plan: Plan, sources: tuple[str, ...], pypi: tuple[PypiDefault, ...] = ()) -> tuple[Pin, ...]:
    """Every exact pin the plan installs, each with the indexes it may come from. Pure.

    `pypi`: which builds PyPI's own torch wheels are (torch_source's order, step 0): a torch pin
    PyPI serves as the planned variant is looked for there, not on the PyTorch index."""
    pins: dict[tuple[str, str], Pin] = {}
    for b in plan.installs:
        for req in b.packages:
            exact = _exact(req)
            if exact:
                # A backend with its own index (xllamacpp's GPU wheels) must find its pin there: the
                # same version on PyPI is the CPU wheel, the silent fallback of classes 4 and 20.
                own = (
                    b.extra_index_urls if b.extra_index_urls and exact[0] == canonicalize_name(b.name) else ()
                )
                pins.setdefault(exact, Pin(*exact, own or sources + b.extra_index_urls))
    for env in plan.environments:
        t = env.torch
        if t is not None and t.version_spec and t.version_spec.startswith("=="):
            os_ = plan.profile.os
            on_pypi = pypi_default_build(pypi, t.variant, t.version_spec, f"{os_.system}-{os_.arch}")
            own = (t.index_url,) if t.index_url and on_pypi is None else sources
            pins.setdefault(("torch", t.version_spec[2:]), Pin("torch", t.version_spec[2:], own))
        for req in env.requirements:
            exact = _exact(req)
            if exact:
                pins.setdefault(exact, Pin(*exact, sources))
    return tuple(pins.values())


def _versions(names: list[str], project: str) -> set[Version]:
    out: set[Version] = set()
    for n in names:
        try:
            if n.endswith(".whl"):
                name, version, *_ = parse_wheel_filename(n)
            else:
                name, version = parse_sdist_filename(n)
        except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
            continue
        if name == project:
            out.add(version)
    return out


def listing(source: str, project: str, timeout: float = 10.0) -> tuple[Listing, set[Version]]:
    """The versions of `project` a source lists: a find-links directory, or a simple index."""
    if "://" not in source or source.startswith("file:"):
        path = Path(source) if "://" not in source else index_pages._file_path(source)
        if "://" not in source:  # find-links directory: the files themselves
            names = [p.name for p in path.glob("*")] if path.is_dir() else []
            return ("listed" if names else "absent"), _versions(names, project)
        page = path / project / "index.html"
        if not page.exists():
            return "absent", set()
        return "listed", _versions(_anchors(page.read_text(errors="replace")), project)
    url = f"{source.rstrip('/')}/{project}/"
    try:
        with urllib.request.urlopen(index_pages._request(url), timeout=timeout) as resp:  # noqa: S310
            text = resp.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as e:
        return ("absent" if e.code == 404 else "unknown"), set()
    except (urllib.error.URLError, OSError, ValueError):
        return "unknown", set()
    return "listed", _versions(_anchors(text), project)


def _anchors(text: str) -> list[str]:
    parser = index_pages._Anchors()
    parser.feed(text)
    return list(parser.names)


def missing_pins(pins: tuple[Pin, ...], timeout: float = 10.0) -> tuple[list[str], list[str]]:
    """(pins no answering source lists, sources that did not answer)."""
    missing: list[str] = []
    silent: list[str] = []
    for pin in pins:
        want = Version(pin.version)
        unknown = False
        found = False
        for src in pin.sources:
            state, versions = listing(src, pin.project, timeout)
            if want in versions:
                found = True
                break
            if state == "unknown":
                unknown = True
                shown = strip_userinfo(src)[0]
                if shown not in silent:
                    silent.append(shown)
        if not found and not unknown:
            missing.append(f"{pin.project}=={pin.version}")
    return missing, silent


def default_sources(
    index_url: str | None, extra: tuple[str, ...], find_links: tuple[str, ...], no_index: bool
) -> tuple[str, ...]:
    """pip's view: find-links, then the index (PyPI when none is configured), then the extras."""
    if no_index:
        return find_links
    return find_links + (index_url or PYPI_SIMPLE,) + extra


def check_pins(plan: Plan, index: IndexConfig, say: Callable[[str], None], timeout: float = 10.0) -> None:
    """Refuse (OperationFailed) when a pin is on none of the indexes it may come from; nothing is
    changed yet. Built backends (llama-cpp-python) are left out: a wheelhouse wheel needs no sdist."""
    sources = default_sources(index.index_url, index.extra_index_urls, index.find_links, index.no_index)
    built = {canonicalize_name(b.name) for b in plan.installs if b.build is not None}
    pypi = pypi_defaults() if not plan.request.torch_index_base else ()
    pins = tuple(p for p in plan_pins(plan, sources, pypi) if p.project not in built)
    missing, silent = missing_pins(pins, timeout)
    if silent:
        say(f"pre-flight: {', '.join(silent)} did not answer; pins only they could serve were not checked")
    if missing:
        shown = ", ".join(strip_userinfo(s)[0] for s in sources)
        raise OperationFailed(
            f"pre-flight: {len(missing)} pinned package(s) are on none of the configured indexes "
            f"({shown}): {', '.join(missing)}; nothing was changed: add them to the mirror, or "
            "point --index-url at an index that has them"
        )
