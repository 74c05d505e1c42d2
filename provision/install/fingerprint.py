"""A cheap fingerprint of what an environment has installed, and the no-op fast path built on it.

Every installer (uv, pip, conda's pip) that adds, removes, upgrades or reinstalls a
distribution writes its `*.dist-info` directory anew; `*.egg-info` and `*.pth` cover legacy
and editable installs. Their names and mtimes, hashed, change whenever the installed set
does, and reading them is one directory scan (about a millisecond), against ~0.3 s for the
child interpreter that lists metadata plus ~1 s for walking ~4,000 requirement strings.

The fingerprint says nothing about files inside a package (a deleted .so, an edited module):
`install` reuses the last verify results only while the fingerprint, the plan and verify's
own checks are unchanged; `xinfer-setup verify` always checks again from scratch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# What an install or uninstall always (re)writes at the top of site-packages.
_MARKERS = (".dist-info", ".egg-info", ".pth", ".egg-link")


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


def installed_fingerprint(prefix: Path) -> str | None:
    """sha256 over (directory, entry name, mtime) of every install marker; None without site-packages."""
    dirs = site_dirs(prefix)
    if not dirs:
        return None
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
        h.update(json.dumps([str(d), entries]).encode())
    return h.hexdigest()[:32]
