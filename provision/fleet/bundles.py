"""One bundle per distinct plan (and host platform), made on the controller, pushed to every
host of the group as one tar: `xinfer-setup bundle`'s make_bundle does the resolving and
fetching; the hosts run `install --from-bundle` with no index at all.

The llama-cpp-python build is left out of the bundle (build_missing=False, this_machine=False):
it travels separately, once per wheelhouse key (ops.install_fleet). xinfer-setup itself is on
the hosts already (probe bootstraps it), so the bundle does not carry it again.

A bundle already made for the same plan by the same tool version is reused as it is (its
MANIFEST.json records timings, so remaking it would change the tar and push it again).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from provision import __version__
from provision.fleet.wheels import pack
from provision.plan import Plan, plan_from_dict


@dataclass(frozen=True)
class GroupBundle:
    plan_id: str
    dir: Path
    tar: Path
    content_id: str  # changes when any file of the bundle does: a host unpacks each id once
    notes: tuple[str, ...]


def _reusable(out: Path, plan_id: str) -> dict | None:
    from provision.fleet.planning import plan_id as id_of

    path = out / "MANIFEST.json"
    if not path.exists():
        return None
    try:
        m = json.loads(path.read_text())
        same = m.get("tool_version") == __version__ and id_of(plan_from_dict(m["plan"])) == plan_id
    except (ValueError, KeyError, TypeError):
        return None
    return m if same else None


def make_group_bundle(plan: Plan, plan_id: str, target: str, base: Path, reporter=None) -> GroupBundle:
    from provision.bundle import make_bundle

    out = base / f"{plan_id}-{target}"
    manifest = _reusable(out, plan_id)
    if manifest is None:
        make_bundle(plan, out, this_machine=False, build_missing=False, include_tool=False, reporter=reporter)
        manifest = json.loads((out / "MANIFEST.json").read_text())
    listing = sorted(f"{f['path']} {f['sha256']}" for f in manifest["files"])
    content_id = hashlib.sha256("\n".join(listing).encode()).hexdigest()[:12]
    tar = pack(out, base / f"{plan_id}-{target}.tar")
    return GroupBundle(plan_id, out, tar, content_id, tuple(manifest.get("notes", [])))
