"""A cheap fingerprint of what an environment has installed, and the no-op fast path built on it.

Every installer (uv, pip, conda's pip) that adds, removes, upgrades or reinstalls a
distribution writes its `*.dist-info` directory anew; `*.egg-info` and `*.pth` cover legacy
and editable installs. Their names and mtimes, hashed, change whenever the installed set
does, and reading them is one directory scan (about a millisecond), against ~0.3 s for the
child interpreter that lists metadata plus ~1 s for walking ~4,000 requirement strings.

Damage inside a package leaves the markers alone, so the backends' own native files (the
shared libraries their RECORD lists: llama_cpp/lib/*.so, xllamacpp's extension, vLLM's kernels)
are in the fingerprint too, by size and mtime: one stat per file, and one RECORD read per
backend distribution present (the backends' distributions come from recipes/backends.toml).
A deleted `llama_cpp/lib` makes the no-op run the full install, which reinstalls the damaged
backend (provision.install.state reports it as broken). An edited pure-Python module is still
past what the fingerprint sees: `xinfer-setup verify` always checks again from scratch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path


def canonicalize_name(name: str) -> str:
    """PEP 503's normal form; packaging's own is not imported here (tens of ms on every no-op)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# What an install or uninstall always (re)writes at the top of site-packages.
_MARKERS = (".dist-info", ".egg-info", ".pth", ".egg-link")
# Shared libraries and extension modules, as RECORD names them (libfoo.so.1 included).
_NATIVE = re.compile(r"\.(so(\.[0-9]+)*|dylib|dll|pyd)$")
_NATIVE_END = re.compile(r"\.(?:so(?:\.[0-9]+)*|dylib|dll|pyd),")  # the end of a RECORD row's path


@cache
def backend_distributions() -> frozenset[str]:
    """Every distribution a backend is installed as (its `dist`, and variants' `distribution`)."""
    from provision.backends import backend_tables

    found: set[str] = set()

    def walk(table: object) -> None:
        if isinstance(table, dict):
            for key, value in table.items():
                if key in ("dist", "distribution") and isinstance(value, str):
                    found.add(canonicalize_name(value))
                walk(value)
        elif isinstance(table, list):
            for item in table:
                walk(item)

    walk(backend_tables())
    return frozenset(found)


def _project(dist_info: str) -> str:
    return canonicalize_name(dist_info[: -len(".dist-info")].split("-")[0])


def native_files(site: Path, dist_info: str) -> list[str]:
    """The native files a distribution's RECORD lists, relative to site-packages."""
    try:
        text = (site / dist_info / "RECORD").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    if '"' in text:  # a quoted path (a comma in a name): the csv module reads it right
        return sorted(row[0] for row in csv.reader(text.splitlines()) if row and _NATIVE.search(row[0]))
    # A scan for the suffix, then its line: xinference's and transformers' ~6,000 pure-Python
    # lines cost ~9 ms through csv on every no-op, a fraction of a millisecond this way.
    found = []
    for m in _NATIVE_END.finditer(text):
        found.append(text[text.rfind("\n", 0, m.start()) + 1 : m.end() - 1])
    return sorted(found)


def native_stats(site: Path, dist_infos: Iterable[str], wanted: frozenset[str]) -> list[list[object]]:
    """[dist-info, file, size, mtime_ns] per native file of the wanted distributions; -1 when gone."""
    out: list[list[object]] = []
    for name in sorted(dist_infos):
        if not name.endswith(".dist-info") or _project(name) not in wanted:
            continue
        for rel in native_files(site, name):
            try:
                st = os.stat(site / rel)
                out.append([name, rel, st.st_size, st.st_mtime_ns])
            except OSError:
                out.append([name, rel, -1, -1])
    return out


def site_dirs(prefix: Path) -> list[Path]:
    """The environment's own package directories (venv, system or Windows layouts)."""
    prefix = Path(prefix)
    found = [
        *prefix.glob("lib/python3*/site-packages"),
        *prefix.glob("lib64/python3*/site-packages"),
        *prefix.glob("lib/python3*/dist-packages"),
        *prefix.glob("Lib/site-packages"),
    ]
    seen: dict[str, Path] = {}
    for d in found:
        seen.setdefault(os.path.realpath(d), d)
    return sorted(seen.values())


def installed_fingerprint(prefix: Path, backends: frozenset[str] | None = None) -> str | None:
    """sha256 over (directory, entry name, mtime) of every install marker and the stats of the
    backends' native files; None without site-packages. backends: distributions to cover (all
    the recipes name, by default)."""
    dirs = site_dirs(prefix)
    if not dirs:
        return None
    wanted = backend_distributions() if backends is None else backends
    h = hashlib.sha256()
    for d in dirs:
        try:
            entries = sorted(
                (e.name, e.stat(follow_symlinks=False).st_mtime_ns)
                for e in os.scandir(d)
                if e.name.endswith(_MARKERS)
            )
        except OSError:
            return None
        native = native_stats(d, (name for name, _ in entries), wanted)
        h.update(json.dumps([str(d), entries, native]).encode())
    return h.hexdigest()[:32]
