"""MANIFEST.json: what a bundle holds (every file's sha256 and size), what it was made for, by what.

Layout of a bundle directory:
    MANIFEST.json            this record; written last, so its presence means the bundle is complete
    wheels/                  every wheel and sdist the plan needs, flat (a find-links directory)
    wheelhouse/<key>/        llama-cpp-python built here, when the target can run it
    locks/pylock.<env>.toml  the PEP 751 lock uv wrote per environment (and build, xinfer-setup)
    simple/                  the same files as a PEP 503 index (for Xinference's virtualenvs)

verify_manifest() is the check `install --from-bundle` runs before touching anything: a file
missing or altered is an OperationFailed naming it (exit 1); a manifest this tool cannot read
(newer format or tool) is a UserError (exit 2).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from provision import __version__
from provision.errors import OperationFailed, UserError

MANIFEST = "MANIFEST.json"
FORMAT = 1
KIND = "xinfer-setup-bundle"


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the bundle, POSIX separators
    sha256: str
    size: int
    role: str  # wheel | sdist | built | lock | tool | index


@dataclass(frozen=True)
class Target:
    """What the bundle's wheels are for: uv's --python-platform, the Python minor, the arch."""

    platform: str  # e.g. x86_64-manylinux_2_36
    python: str  # "3.11" (the primary environment's)
    system: str  # linux | darwin | windows
    arch: str


@dataclass
class Manifest:
    tool_version: str
    target: Target
    plan: dict[str, Any]
    files: list[FileEntry]
    environments: dict[str, dict[str, Any]] = field(default_factory=dict)  # env -> python, pins, lock
    built: dict[str, str] = field(default_factory=dict)  # backend -> wheelhouse key, when included
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    format: int = FORMAT
    kind: str = KIND

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def entry_for(root: Path, path: Path, role: str, sha256: str | None = None) -> FileEntry:
    """sha256: a hash already checked against these bytes this run (the fetch streams it), else read."""
    return FileEntry(path.relative_to(root).as_posix(), sha256 or sha256_of(path), path.stat().st_size, role)


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Atomically: a reader never sees half a manifest."""
    target = root / MANIFEST
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(manifest.to_dict(), f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, target)
    return target


def manifest_from_dict(d: dict[str, Any], where: Path) -> Manifest:
    if not isinstance(d, dict) or d.get("kind") != KIND:
        raise UserError(f"{where} is not an xinfer-setup bundle manifest")
    fmt = d.get("format")
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise UserError(
            f"{where} has manifest format {fmt}; this xinfer-setup ({__version__}) reads format {FORMAT}: "
            f"upgrade xinfer-setup (its wheel is in the bundle's wheels/)"
        )
    try:
        made_by = Version(str(d["tool_version"]))
    except (KeyError, InvalidVersion):
        raise UserError(f"{where}: tool_version is missing or not a version") from None
    if made_by > Version(__version__):
        raise UserError(
            f"{where} was made by xinfer-setup {made_by}, newer than this one ({__version__}): "
            f"install the bundle's own xinfer-setup first (pip install --no-index --find-links "
            f"{where.parent / 'wheels'} xinfer-setup)"
        )
    try:
        t = d["target"]
        return Manifest(
            tool_version=str(d["tool_version"]),
            target=Target(t["platform"], t["python"], t["system"], t["arch"]),
            plan=d["plan"],
            files=[FileEntry(f["path"], f["sha256"], int(f["size"]), f["role"]) for f in d["files"]],
            environments=dict(d.get("environments") or {}),
            built=dict(d.get("built") or {}),
            notes=list(d.get("notes") or []),
            timings=dict(d.get("timings") or {}),
            format=fmt,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where}: a required field is missing or malformed ({e})") from None


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    if not root.is_dir():
        raise UserError(f"{root} is not a directory (give the folder `xinfer-setup bundle -o` wrote)")
    if not path.is_file():
        raise UserError(f"{root} is not a bundle: it has no {MANIFEST}")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} cannot be read as JSON ({e})") from None
    return manifest_from_dict(d, path)


def check_files(root: Path, manifest: Manifest) -> None:
    """Every listed file present with its size and sha256: the first one that is not is named."""
    for f in manifest.files:
        path = root / f.path
        if not path.is_file():
            raise OperationFailed(f"bundle file missing: {f.path} (listed in {MANIFEST}); nothing installed")
        if path.stat().st_size != f.size or sha256_of(path) != f.sha256:
            raise OperationFailed(
                f"bundle file altered: {f.path} (its sha256 differs from {MANIFEST}); nothing installed"
            )


def verify_manifest(root: str | Path) -> Manifest:
    """Read the manifest and check every file against it. The API fleet and install call."""
    root = Path(root)
    manifest = read_manifest(root)
    check_files(root, manifest)
    return manifest


def is_bundle(root: Path) -> bool:
    return (root / MANIFEST).is_file()
