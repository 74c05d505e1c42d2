"""What is installed in an environment, and whether it already satisfies a set of requirements.

The environment's own interpreter lists its distributions (importlib.metadata: no pip, no
imports of the packages themselves, ~0.1 s); deciding what is missing is a pure function of
that list, so the no-op re-run costs one small subprocess per environment.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from provision.errors import OperationFailed
from provision.requirements import local_tag

# Runs inside the target environment; stdlib only.
_LIST_SCRIPT = r"""
import json, sys, platform
from importlib import metadata
dists = {}
for d in metadata.distributions():
    name = d.metadata["Name"]
    if not name or name in dists:
        continue
    dists[name] = {"version": d.version, "requires": d.requires or [],
                   "direct_url": d.read_text("direct_url.json")}
env = {"python_version": "%d.%d" % sys.version_info[:2], "python_full_version": platform.python_version(),
       "sys_platform": sys.platform, "platform_machine": platform.machine(),
       "platform_system": platform.system(),
       "os_name": __import__("os").name, "implementation_name": sys.implementation.name,
       "platform_python_implementation": platform.python_implementation()}
# dist-info directories without METADATA: an install cut short (full disk, kill). Installers
# cannot even read the environment with one of them in it.
import os
broken = sorted({os.path.join(p, n) for p in sys.path if os.path.isdir(p) for n in os.listdir(p)
                 if n.endswith(".dist-info") and not os.path.exists(os.path.join(p, n, "METADATA"))})
# A backend (argv[1]: its distributions) whose RECORD lists a shared library that is gone (a
# deleted llama_cpp/lib) is broken too: its record goes, so the install puts its files back.
import csv, re
wanted = set(json.loads(sys.argv[1])) if len(sys.argv) > 1 else set()
native = re.compile(r"\.(so(\.[0-9]+)*|dylib|dll|pyd)$")
for p in [p for p in sys.path if os.path.isdir(p)]:
    for n in os.listdir(p):
        project = re.sub(r"[-_.]+", "-", n[:-10].split("-")[0]).lower()
        if not n.endswith(".dist-info") or project not in wanted:
            continue
        try:
            with open(os.path.join(p, n, "RECORD"), newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
        except OSError:
            continue
        if any(r and native.search(r[0]) and not os.path.exists(os.path.join(p, r[0])) for r in rows):
            broken = sorted(set(broken) | {os.path.join(p, n)})
print(json.dumps({"dists": dists, "markers": env, "broken": broken}))
"""


@dataclass(frozen=True)
class Dist:
    name: str  # canonical
    version: str
    requires: tuple[str, ...]
    direct_url: str | None  # the URL it was installed from, when it came from a file/URL
    archive_hash: str | None = None  # "sha256=<hex>" of that file, when the installer recorded it

    @property
    def local_tag(self) -> str | None:
        return local_tag(self.version)


@dataclass(frozen=True)
class EnvState:
    dists: dict[str, Dist]
    markers: dict[str, str]
    # dist-info directories without METADATA (cut-short installs), or of a backend whose shared
    # libraries are gone: either way, what the install must put back.
    broken: tuple[str, ...] = ()

    def get(self, name: str) -> Dist | None:
        return self.dists.get(canonicalize_name(name))

    def frozen(self) -> list[str]:
        """`name==version` of everything installed, sorted: what a replay pins."""
        return sorted(f"{d.name}=={d.version}" for d in self.dists.values())


def parse_listing(data: dict[str, Any]) -> EnvState:
    dists: dict[str, Dist] = {}
    for name, d in data["dists"].items():
        key = canonicalize_name(name)
        direct, archive = None, None
        if d.get("direct_url"):
            try:
                info = json.loads(d["direct_url"])
                direct = info.get("url")
                hashes = (info.get("archive_info") or {}).get("hashes") or {}
                legacy = (info.get("archive_info") or {}).get("hash")
                archive = f"sha256={hashes['sha256']}" if "sha256" in hashes else legacy
            except (ValueError, AttributeError, TypeError):
                direct = None
        dists[key] = Dist(key, d["version"], tuple(d.get("requires") or ()), direct, archive)
    return EnvState(dists, data.get("markers") or {}, tuple(data.get("broken") or ()))


def read_state(python: Path) -> EnvState:
    if not Path(python).exists():
        return EnvState({}, {})
    from provision.install.fingerprint import backend_distributions

    argv = [str(python), "-I", "-c", _LIST_SCRIPT, json.dumps(sorted(backend_distributions()))]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        raise OperationFailed(f"cannot list the packages of {python}: {e}") from None
    return parse_listing(json.loads(out.stdout))


def unmet(
    requirements: list[str] | tuple[str, ...], state: EnvState, ignore: frozenset[str] = frozenset()
) -> list[str]:
    """Requirements (and, through them, their dependencies) the environment does not satisfy.

    Walks Requires-Dist with the requested extras, evaluating markers for the environment's
    own interpreter, so `xinference[transformers]` counts as met only when the extra's
    packages are there too. An empty list means a re-install would change nothing.
    """
    # packaging's marker environment, overlaid with the target's own (all strings).
    markers: dict[str, str] = {**cast("dict[str, str]", default_environment()), **state.markers}
    missing: list[str] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(r, "") for r in requirements]
    while todo:
        text, extra = todo.pop()
        try:
            req = Requirement(text)
        except InvalidRequirement:
            missing.append(text)
            continue
        if req.marker is not None and not req.marker.evaluate({**markers, "extra": extra}):
            continue
        if canonicalize_name(req.name) in ignore:
            continue
        dist = state.get(req.name)
        if dist is None or not _version_ok(req, dist):
            missing.append(text)
            continue
        if req.url and dist.direct_url != req.url:
            missing.append(text)
            continue
        key = (dist.name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        for sub in dist.requires:
            sub_req = _safe(sub)
            if sub_req is None:
                continue
            if sub_req.marker is None:
                todo.append((sub, ""))
                continue
            # A dependency gated on an extra applies only when that extra was asked for.
            for ex in req.extras or {""}:
                if sub_req.marker.evaluate({**markers, "extra": ex}):
                    todo.append((str(sub_req).split(";")[0], ""))
                    break
    return sorted(set(missing))


def _safe(text: str) -> Requirement | None:
    try:
        return Requirement(text)
    except InvalidRequirement:
        return None


def _version_ok(req: Requirement, dist: Dist) -> bool:
    if not req.specifier:
        return True
    try:
        return req.specifier.contains(Version(dist.version), prereleases=True)
    except InvalidVersion:
        return False


def deliberately_absent(state: EnvState) -> frozenset[str]:
    """A torchvision the installer removed (no build for this local-tagged torch) counts as met.

    Requirements pulling it (xinference -> timm -> torchvision) would otherwise reinstall the
    mismatched build on every run, and it breaks transformers' imports.
    """
    torch = state.get("torch")
    if torch is not None and torch.local_tag and state.get("torchvision") is None:
        return frozenset({"torchvision"})
    return frozenset()


def deliberate_gaps(state: EnvState, notes: list[str] | tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """What `pip check` reports that the installer did on purpose: (requiring dist, the sentence).

    Fresh `install --auto` on a CPU torch: "timm 1.0.24 requires torchvision, which is not
    installed" (xinference -> timm). notes: the environment record's notes, where the installer
    said why it removed the package ("removed torchvision 0.28.0: ..."); quoted back here.
    """
    absent = deliberately_absent(state)
    if not absent:
        return []
    markers: dict[str, str] = {**cast("dict[str, str]", default_environment()), **state.markers, "extra": ""}
    gaps = []
    for dist in sorted(state.dists.values(), key=lambda d: d.name):
        for line in dist.requires:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            missing = canonicalize_name(req.name)
            if missing not in absent or (req.marker is not None and not req.marker.evaluate(markers)):
                continue
            why = next(
                (n for n in notes if n.startswith(f"removed {missing} ")), f"{missing} left out on purpose"
            )
            gaps.append(
                (
                    dist.name,
                    f"`pip check` reports {dist.name} {dist.version} requires {missing}, which is not "
                    f"installed: known and deliberate ({why})",
                )
            )
    return gaps


def closure(requirements: list[str] | tuple[str, ...], state: EnvState) -> list[str]:
    """Installed distributions the requirements pull in (themselves and their Requires-Dist, with
    extras and markers read as `unmet` reads them): what a suspect step reinstalls."""
    markers: dict[str, str] = {**cast("dict[str, str]", default_environment()), **state.markers}
    found: dict[str, None] = {}
    todo = list(requirements)
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req = _safe(todo.pop())
        dist = state.get(req.name) if req is not None else None
        if req is None or dist is None or (dist.name, frozenset(req.extras)) in seen:
            continue
        seen.add((dist.name, frozenset(req.extras)))
        found[dist.name] = None
        for sub in dist.requires:
            sub_req = _safe(sub)
            if sub_req is None:
                continue
            if sub_req.marker is None or any(
                sub_req.marker.evaluate({**markers, "extra": ex}) for ex in (req.extras or {""})
            ):
                todo.append(str(sub_req).split(";")[0])
    return list(found)
