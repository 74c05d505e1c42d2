"""MANIFEST.json: what a bundle holds (every file's sha256 and size), what it was made for, by what.

Layout of a bundle directory:
    MANIFEST.json            this record; written last, so its presence means the bundle is complete
    wheels/                  every wheel and sdist the plan needs, flat (a find-links directory)
    wheelhouse/<key>/        llama-cpp-python built here, when the target can run it
    locks/pylock.<env>.toml  the PEP 751 lock uv wrote per environment (and build, xinfer-setup)
    simple/                  the same files as a PEP 503 index (for Xinference's virtualenvs)
    SHA256SUMS               every listed file and MANIFEST.json, in `sha256sum -c` format: compare
                             this one file out of band (its own sha256, or a signature of it)

verify_manifest() is the check `install --from-bundle` runs before touching anything: a file
missing or altered is an OperationFailed naming it (exit 1); a manifest this tool cannot read
(newer format or tool), a listed path that leaves the bundle, a symlink, or a file in the
bundle's folders that the manifest does not list is a UserError (exit 2). The folders above are
what installers read (a find-links directory takes any wheel in it, and a build-tagged name
outranks the listed one), so nothing unlisted may sit there.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.version import InvalidVersion, Version

from provision import __version__
from provision.errors import OperationFailed, UserError

MANIFEST = "MANIFEST.json"
SUMS = "SHA256SUMS"
# Every listed file lives under one of these; nothing unlisted may (see the module docstring).
FOLDERS = ("wheels", "wheelhouse", "locks", "simple")
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
    # The profile of the host that built those wheels for another machine (`bundle --profile`): the
    # target's install uses it as the builder, so its wheelhouse keys are the ones built here.
    built_on: dict[str, Any] | None = None
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


def sums_text(manifest: Manifest, manifest_bytes: bytes) -> str:
    """SHA256SUMS: `sha256sum -c` checks every file; its own hash stands for the whole bundle."""
    lines = [f"{f.sha256}  {f.path}" for f in sorted(manifest.files, key=lambda f: f.path)]
    lines.append(f"{hashlib.sha256(manifest_bytes).hexdigest()}  {MANIFEST}")
    return "\n".join(lines) + "\n"


def _write_atomic(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Atomically: a reader never sees half a manifest. SHA256SUMS first, so a bundle with its
    MANIFEST.json (the mark of a complete bundle) has its sums too."""
    data = (json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n").encode()
    _write_atomic(root / SUMS, sums_text(manifest, data).encode())
    _write_atomic(root / MANIFEST, data)
    return root / MANIFEST


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
            built_on=d.get("built_on"),
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


def path_problem(rel: str) -> str | None:
    """Why a listed path is not a plain file path inside one of the bundle's folders, or None."""
    p = PurePosixPath(rel)
    if not rel or "\\" in rel or "\0" in rel or p.is_absolute():
        return "not a relative path"
    if any(part in ("..", ".", "") for part in rel.split("/")):
        return "it leaves the bundle or is not normal"
    if len(p.parts) < 2 or p.parts[0] not in FOLDERS:
        return f"not under {', '.join(f + '/' for f in FOLDERS)}"
    return None


def _named(paths: list[str], limit: int = 3) -> str:
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def check_layout(root: Path, manifest: Manifest) -> None:
    """No hashing, so cheap: every listed path stays inside the bundle, and the bundle's folders
    hold only listed regular files (no symlink anywhere, nothing extra). UserError otherwise."""
    for f in manifest.files:
        why = path_problem(f.path)
        if why:
            raise UserError(f"{MANIFEST} lists {f.path!r} ({why}): refusing the bundle; nothing installed")
    listed = {f.path for f in manifest.files}
    links: list[str] = []
    extra: list[str] = []
    for folder in FOLDERS:
        top = root / folder
        if top.is_symlink():
            links.append(folder)
            continue
        for dirpath, dirnames, filenames in os.walk(top):  # does not follow symlinks
            for name in sorted(dirnames + filenames):
                path = Path(dirpath) / name
                rel = path.relative_to(root).as_posix()
                if path.is_symlink():
                    links.append(rel)
                elif name in filenames and (rel not in listed or not path.is_file()):
                    extra.append(rel)
    if links:
        raise UserError(
            f"the bundle has symlinks where files must be: {_named(sorted(links))} "
            f"(copy the files in); nothing installed"
        )
    if extra:
        raise UserError(
            f"the bundle holds files its {MANIFEST} does not list: {_named(sorted(extra))} "
            f"(remove them, or make the bundle again); nothing installed"
        )


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
    check_layout(root, manifest)
    check_files(root, manifest)
    return manifest


def is_bundle(root: Path) -> bool:
    return (root / MANIFEST).is_file()
