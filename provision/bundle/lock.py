"""Per-environment locks for the target: `uv pip compile -o pylock.<env>.toml` from install's sources.

The indexes are the ones `install` would use on the target: pip's configuration (read once by
provision.install.pipconfig), the backend's extra index (xllamacpp's GPU wheels), and the torch
variant's own index (or the local `+variant` wheel install falls back to). uv writes a PEP 751
lock for the target's --python-platform/--python-version: one entry per package with the URL,
size and sha256 of every wheel that fits the target, so the files are fetched without pip's
tag guessing and a dry run can add up sizes.

Source builds (llama-cpp-python) are not resolved as themselves: their sdist's own
Requires-Dist, with the planned extras, is resolved in their place (read from the sdist's
PKG-INFO; nothing is built).
"""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tarfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from provision.errors import OperationFailed
from provision.install.executor import Installer
from provision.install.pipconfig import IndexConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FileKind = Literal["wheel", "sdist"]


@dataclass(frozen=True)
class LockedFile:
    """One file of one locked package: where it comes from and what it must hash to."""

    project: str
    version: str
    url: str
    filename: str
    sha256: str
    size: int | None
    kind: FileKind


@dataclass
class EnvLock:
    name: str
    platform: str
    python: str
    requirements: list[str]
    lock_text: str = ""
    pins: dict[str, str] = field(default_factory=dict)  # canonical name -> version
    files: list[LockedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def sdist_requires(sdist: Path, extras: tuple[str, ...]) -> list[str]:
    """Requires-Dist of an sdist (its PKG-INFO), with the markers of the requested extras applied.

    Sample (llama_cpp_python-0.3.36/PKG-INFO): `Requires-Dist: uvicorn>=0.22.0; extra == "server"`.
    The extra marker is evaluated here; other markers (python_version...) stay for uv to judge
    against the target.
    """
    with tarfile.open(sdist) as tf:
        member = next(
            (m for m in tf.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")), None
        )
        if member is None:
            raise OperationFailed(f"{sdist.name} has no PKG-INFO to read its requirements from")
        f = tf.extractfile(member)
        assert f is not None
        meta = email.parser.Parser().parsestr(f.read().decode("utf-8", errors="replace"))
    out = []
    for line in meta.get_all("Requires-Dist") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and "extra" in str(req.marker):
            # Only the extra is asked here; a marker that also names python_version etc. keeps them
            # for uv to judge against the target (none in llama-cpp-python 0.3.36's PKG-INFO).
            wanted = any(req.marker.evaluate({"extra": e}) for e in extras)
            if not wanted:
                continue
            req.marker = None if _only_extra(str(req.marker)) else req.marker
        out.append(str(req))
    return out


def _only_extra(marker: str) -> bool:
    return marker.replace(" ", "").startswith("extra==") and " and " not in marker and " or " not in marker


def sdist_build_requires(sdist: Path, default: list[str]) -> list[str]:
    """[build-system].requires of an sdist's pyproject.toml; the PEP 517 default without one."""
    with tarfile.open(sdist) as tf:
        member = next(
            (m for m in tf.getmembers() if m.name.count("/") == 1 and m.name.endswith("/pyproject.toml")),
            None,
        )
        if member is None:
            return list(default)
        f = tf.extractfile(member)
        assert f is not None
        try:
            data = tomllib.loads(f.read().decode("utf-8", errors="replace"))
        except tomllib.TOMLDecodeError:
            return list(default)
    reqs = (data.get("build-system") or {}).get("requires")
    return list(reqs) if isinstance(reqs, list) else list(default)


def compile_argv(
    uv: str,
    platform: str,
    python: str,
    req_file: Path,
    out_file: Path,
    index: IndexConfig,
    extra_index_urls: tuple[str, ...],
    excludes: Path | None = None,
) -> list[str]:
    """The `uv pip compile` command for one environment; index flags exactly as install builds them."""
    argv = [uv, "pip", "compile", "--python-platform", platform, "--python-version", python]
    argv += ["--color", "never", "--quiet"]
    # The same translation of pip's config (and the extra index first) that install's uv command gets.
    argv += Installer("uv", index)._index_flags(extra_index_urls)
    if excludes is not None:
        argv += ["--excludes", str(excludes)]
    return argv + ["-o", str(out_file), str(req_file)]


def _tag_rank(filename: str) -> tuple[int, int]:
    """Prefer the wheel with the newest manylinux (or platform) tag uv found fitting; ties: shortest name."""
    try:
        _, _, _, tags = parse_wheel_filename(filename)
    except Exception:
        return (0, 0)
    best = 0
    for t in tags:
        parts = t.platform.split("_")
        if t.platform.startswith("manylinux_") and len(parts) > 2 and parts[2].isdigit():
            best = max(best, int(parts[1]) * 100 + int(parts[2]))
        elif t.platform == "any":
            best = max(best, 1)
    return (best, -len(filename))


def _file_name(url: str) -> str:
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(url).path.rsplit("/", 1)[-1])


def _entry(project: str, version: str, d: dict[str, Any], kind: FileKind) -> LockedFile:
    url = d.get("url") or ""
    if not url and d.get("path"):
        url = Path(d["path"]).absolute().as_uri()
    hashes = d.get("hashes") or {}
    if "sha256" not in hashes:
        raise OperationFailed(f"uv's lock gives no sha256 for {project} {version} ({url})")
    return LockedFile(project, version, url, _file_name(url), hashes["sha256"], d.get("size"), kind)


def files_from_pylock(data: dict[str, Any], skip: Collection[str] = frozenset()) -> list[LockedFile]:
    """One file per package: the best-fitting wheel, else the sdist (sdist-only packages)."""
    files = []
    for p in data.get("packages") or []:
        project, version = canonicalize_name(p["name"]), str(p.get("version", ""))
        if project in skip:
            continue
        wheels = p.get("wheels") or []
        if wheels:
            best = max(wheels, key=lambda w: _tag_rank(_file_name(w.get("url") or w.get("path") or "")))
            files.append(_entry(project, version, best, "wheel"))
        elif p.get("sdist"):
            files.append(_entry(project, version, p["sdist"], "sdist"))
        else:
            raise OperationFailed(f"uv's lock has no file for {project} {version}")
    return files


def run_compile(
    uv: str,
    lock: EnvLock,
    index: IndexConfig,
    extra_index_urls: tuple[str, ...],
    workdir: Path,
    excluded: Sequence[str] = (),
    timeout: float = 600.0,
) -> EnvLock:
    """Resolve lock.requirements for its target; fill pins, files and the lock text."""
    workdir.mkdir(parents=True, exist_ok=True)
    req_file = workdir / f"{lock.name}.in"
    req_file.write_text("\n".join(lock.requirements) + "\n")
    ex_file = None
    if excluded:
        ex_file = workdir / f"{lock.name}.excludes"
        ex_file.write_text("\n".join(excluded) + "\n")
    out_file = workdir / f"pylock.{lock.name}.toml"
    argv = compile_argv(uv, lock.platform, lock.python, req_file, out_file, index, extra_index_urls, ex_file)
    started = time.monotonic()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"[{lock.name}] uv pip compile did not finish in {timeout:.0f} s") from None
    lock.seconds = round(time.monotonic() - started, 2)
    if out.returncode != 0 or not out_file.exists():
        text = " ".join(
            ln.strip() for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("hint")
        )
        raise OperationFailed(
            f"[{lock.name}] does not resolve for {lock.platform}, Python {lock.python}: {text[:600]}"
        )
    lock.lock_text = out_file.read_text()
    data = tomllib.loads(lock.lock_text)
    lock.pins = {canonicalize_name(p["name"]): str(p.get("version", "")) for p in data.get("packages") or []}
    lock.files = files_from_pylock(data)
    return lock


def project_of(filename: str) -> str | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[0]
        return parse_sdist_filename(filename)[0]
    except Exception:
        return None
