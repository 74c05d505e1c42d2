"""What a package index says about a project's releases, read as the index serves it.

The simple API (PEP 691 JSON or PEP 503 HTML, whichever the index answers) lists the files;
a wheel's METADATA is read from the wheel itself with HTTP range requests (zipfile reads the
central directory and one member, a few hundred kB of a 400 MB CUDA wheel), an sdist's
PKG-INFO by streaming the archive until it appears. An index that ignores Range answers 200
with the whole file, which is read the same way. IndexView adds the one other question asked
of an index: does a set of requirements resolve there (`uv pip compile --no-build`). This is
the I/O edge of scripts/refresh-recipes and `plan --pin`; provision.planner.derive decides
from what it returns.
"""

from __future__ import annotations

import base64
import email
import email.message
import html.parser
import http.client
import io
import json
import re
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

from provision.errors import OperationFailed
from provision.planner.recipes import Recipes
from provision.planner.resolve import parse_pins
from provision.redact import strip_userinfo

PYPI_SIMPLE = "https://pypi.org/simple"
_ACCEPT = "application/vnd.pypi.simple.v1+json, text/html;q=0.5"
_TIMEOUT = 60.0
_CHUNK = 256 * 1024  # one range request reads at least this much (the central directory's tail)


@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    requires_python: str | None
    yanked: bool
    version: Version
    wheel: bool


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.append(dict(attrs))


def _request(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> urllib.request.Request:
    """Credentials in the URL's userinfo go as Basic auth (urllib cannot open user:pw@host),
    never on to a redirect's target."""
    bare, creds = strip_userinfo(url)
    req = urllib.request.Request(bare, headers=headers or {}, method=method)
    if creds is not None:
        token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        req.add_unredirected_header("Authorization", f"Basic {token}")
    return req


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[bytes, str, int]:
    try:
        with urllib.request.urlopen(_request(url, headers), timeout=_TIMEOUT) as resp:
            return resp.read(), resp.headers.get("Content-Type", ""), resp.status
    except urllib.error.HTTPError as e:
        raise OperationFailed(f"{_safe(url)}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise OperationFailed(f"{_safe(url)} cannot be read: {reason}") from None


def _safe(url: str) -> str:
    """A URL without credentials, for messages."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    netloc = f"{host}:{p.port}" if p.port else host
    return urllib.parse.urlunsplit((p.scheme, netloc, p.path, "", ""))


def _version_of(filename: str) -> tuple[Version, bool] | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1], True
        return parse_sdist_filename(filename)[1], False
    except (InvalidWheelFilename, InvalidSdistFilename, ValueError):
        return None


def project_files(index_url: str, project: str) -> list[IndexFile]:
    """Every wheel and sdist the index lists for `project` (empty when it has none)."""
    page = f"{index_url.rstrip('/')}/{canonicalize_name(project)}/"
    try:
        body, ctype, _ = _get(page, {"Accept": _ACCEPT})
    except OperationFailed as e:
        if "HTTP 404" in str(e):
            return []
        raise
    raw: list[tuple[str, str, str | None, bool]] = []
    if "json" in ctype:
        for f in json.loads(body).get("files", []):
            raw.append((f["filename"], f["url"], f.get("requires-python"), bool(f.get("yanked"))))
    else:
        parser = _Links()
        parser.feed(body.decode("utf-8", "replace"))
        for a in parser.links:
            href = a.get("href") or ""
            name = urllib.parse.unquote(href.split("#")[0].rsplit("/", 1)[-1])
            raw.append((name, href, a.get("data-requires-python"), "data-yanked" in a))
    out = []
    for name, href, rp, yanked in raw:
        parsed = _version_of(name)
        if parsed is None:
            continue
        url = urllib.parse.urljoin(page, href.split("#")[0])
        out.append(IndexFile(name, url, rp, yanked, parsed[0], parsed[1]))
    return out


def releases(files: list[IndexFile]) -> list[Version]:
    """Final releases with at least one file that is not yanked, oldest first."""
    return sorted({f.version for f in files if not f.yanked and not f.version.is_prerelease})


def files_of(files: list[IndexFile], version: Version) -> list[IndexFile]:
    return [f for f in files if f.version == version and not f.yanked]


class _RangeFile(io.RawIOBase):
    """A read-only, seekable view of a remote file through HTTP Range requests."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pos = 0
        self.cache: dict[int, bytes] = {}
        self.whole: bytes | None = None
        body, _, status = _get(url, {"Range": f"bytes=-{_CHUNK}"})
        if status == 200:  # no Range support: the whole file came
            self.whole = body
            self.size = len(body)
        else:
            self.size = self._total_from_head(len(body))
            self.cache[self.size - len(body)] = body

    def _total_from_head(self, got: int) -> int:
        try:
            with urllib.request.urlopen(_request(self.url, method="HEAD"), timeout=_TIMEOUT) as resp:
                return int(resp.headers.get("Content-Length") or got)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
            raise OperationFailed(f"{_safe(self.url)} cannot be read: {e}") from None

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def _from_cache(self, start: int, n: int) -> bytes | None:
        for at, data in self.cache.items():
            if at <= start and start + n <= at + len(data):
                return data[start - at : start - at + n]
        return None

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.size - self.pos
        n = min(n, self.size - self.pos)
        if n <= 0:
            return b""
        if self.whole is not None:
            data = self.whole[self.pos : self.pos + n]
        else:
            data = self._from_cache(self.pos, n) or b""
            if not data:
                end = min(self.size, self.pos + max(n, _CHUNK)) - 1
                body, _, _ = _get(self.url, {"Range": f"bytes={self.pos}-{end}"})
                self.cache[self.pos] = body
                data = body[:n]
        self.pos += len(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _parse(text: bytes) -> email.message.Message:
    return email.message_from_bytes(text)


def wheel_metadata(f: IndexFile) -> email.message.Message:
    """The wheel's *.dist-info/METADATA (Requires-Python, Requires-Dist, Provides-Extra)."""
    remote = _RangeFile(f.url)
    try:
        with zipfile.ZipFile(cast(IO[bytes], remote)) as zf:
            names = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            if not names:
                raise OperationFailed(f"{f.filename} has no .dist-info/METADATA")
            return _parse(zf.read(names[0]))
    except zipfile.BadZipFile as e:
        raise OperationFailed(f"{f.filename} is not a readable wheel: {e}") from None


def sdist_metadata(f: IndexFile, limit_mb: int = 200) -> email.message.Message:
    """The sdist's top-level PKG-INFO, streamed (the archive is not kept)."""
    try:
        with urllib.request.urlopen(_request(f.url), timeout=_TIMEOUT) as resp:
            if f.filename.endswith(".zip"):
                with zipfile.ZipFile(io.BytesIO(resp.read(limit_mb << 20))) as zf:
                    top = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/PKG-INFO")]
                    if top:
                        return _parse(zf.read(top[0]))
            else:
                with tarfile.open(fileobj=resp, mode="r|*") as tf:
                    for member in tf:
                        if member.name.count("/") == 1 and member.name.endswith("/PKG-INFO"):
                            got = tf.extractfile(member)
                            if got is not None:
                                return _parse(got.read())
    except (
        urllib.error.URLError,
        OSError,
        tarfile.TarError,
        zipfile.BadZipFile,
        http.client.HTTPException,
    ) as e:
        raise OperationFailed(f"{f.filename} cannot be read: {e}") from None
    raise OperationFailed(f"{f.filename} has no PKG-INFO")


def metadata(f: IndexFile) -> email.message.Message:
    return wheel_metadata(f) if f.wheel else sdist_metadata(f)


@dataclass(frozen=True)
class Compiled:
    ok: bool
    pins: dict[str, str]
    error: str


class IndexView:
    """One index, read once per file: its project listings, metadata, and real resolutions."""

    def __init__(self, index_url: str, uv: str, recipes: Recipes) -> None:
        self.index_url = index_url.rstrip("/")
        self.uv = uv
        self.recipes = recipes
        self._files: dict[str, list[IndexFile]] = {}
        self._meta: dict[str, email.message.Message] = {}

    @property
    def label(self) -> str:
        return _safe(self.index_url)

    def files(self, project: str) -> list[IndexFile]:
        key = canonicalize_name(project)
        if key not in self._files:
            self._files[key] = project_files(self.index_url, project)
        return self._files[key]

    def newest(self, project: str) -> Version | None:
        rel = releases(self.files(project))
        return rel[-1] if rel else None

    def metadata(self, f: IndexFile) -> email.message.Message:
        if f.url not in self._meta:
            self._meta[f.url] = metadata(f)
        return self._meta[f.url]

    def compile(self, reqs: list[str], platform: str, python: str) -> Compiled:
        sdist_only = self.recipes.resolve.sdist_only
        if any(r.startswith("xinference") for r in reqs):
            # xinference's sdist-only dependencies are excluded; what they require stands in.
            reqs = reqs + [r for deps in sdist_only.values() for r in deps]
        with tempfile.TemporaryDirectory(prefix="xinfer-refresh-") as tmp:
            req_file, ex_file = Path(tmp) / "requirements.in", Path(tmp) / "excludes.txt"
            req_file.write_text("\n".join(reqs) + "\n")
            ex_file.write_text("\n".join(sdist_only) + "\n")
            argv = [
                self.uv, "pip", "compile", "--no-config", "--no-build", "--no-python-downloads",
                "--index-url", self.index_url,
                "--python-platform", platform, "--python-version", python, "--excludes", str(ex_file),
                "--no-header", "--no-annotate", "--color", "never", str(req_file),
            ]  # fmt: skip
            try:
                out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                return Compiled(False, {}, f"uv pip compile did not run: {e}")
        if out.returncode != 0:
            lines = [
                ln.strip()
                for ln in out.stderr.splitlines()
                if ln.strip() and not ln.lstrip().startswith(("hint:", "warning:"))
            ]
            text = re.sub(r"\s+", " ", " ".join(lines))
            # uv's explanation starts after its fixed preamble; the preamble says nothing.
            text = re.sub(r"^error: No solution found when resolving dependencies:?( cause:)? ?", "", text)
            return Compiled(False, {}, text[:700])
        return Compiled(True, parse_pins(out.stdout), "")
