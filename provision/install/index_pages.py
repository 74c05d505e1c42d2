"""Reading package indexes ourselves: simple-index (PEP 503) and find-links pages, and one file.

pip and uv do the installing; these answer the questions they do not: is the torch index up,
which local-tagged builds does a mirror hold, what sha256 does the index publish for a file, and
(for the llama-cpp-python sdist) the file itself, fetched without pip's metadata preparation.
Credentials in an index URL's userinfo go as Basic auth, and only to that URL's own host.
"""

from __future__ import annotations

import base64
import hashlib
import html.parser
import http.client
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from provision.redact import strip_userinfo


def _file_path(url: str) -> Path:
    """The local path of a file: URL (find-links and mirrors on disk)."""
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))


def _request(url: str, method: str = "GET") -> urllib.request.Request:
    """A request for an index URL; credentials in its userinfo go as Basic auth, as pip sends them.

    urllib cannot open `https://user:pw@host/...` (http.client takes `pw@host` for a port and
    raises InvalidURL), which crashed install for anyone with a credentialed mirror in pip.conf.
    """
    bare, creds = strip_userinfo(url)
    req = urllib.request.Request(bare, method=method)
    if creds is not None:
        token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        # Unredirected: urllib would otherwise send it on to wherever a redirect points.
        req.add_unredirected_header("Authorization", f"Basic {token}")
    return req


# Everything opening an index may raise when the index is down, refuses us or is misspelt.
_NET_ERRORS = (urllib.error.URLError, OSError, ValueError, http.client.HTTPException)


def index_reachable(url: str, timeout: float = 3.0) -> bool:
    """A HEAD of the index page for torch: cheap, and enough to know whether pip/uv could use it."""
    probe = url.rstrip("/") + "/torch/"
    if probe.startswith("file:"):
        return _file_path(probe).exists()
    try:
        with urllib.request.urlopen(_request(probe, "HEAD"), timeout=timeout) as resp:  # noqa: S310
            return resp.status < 400
    except _NET_ERRORS:
        return False


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.hrefs: dict[str, str] = {}  # file name -> its link, as written (often relative)
        self.sha256: dict[str, str] = {}  # file name -> the index's #sha256= fragment

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href") or ""
            url, _, fragment = href.partition("#")
            name = urllib.parse.unquote(url.rsplit("/", 1)[-1])
            self.names.append(name)
            self.hrefs.setdefault(name, url)
            if fragment.startswith("sha256="):
                self.sha256[name] = fragment.split("=", 1)[1].lower()


def wheel_names_in_html(text: str) -> list[str]:
    """File names linked from a simple-index or find-links page.

    Sample (/opt/pypi/simple/timm/index.html here):
      <a href="../../files/timm-1.0.29-py3-none-any.whl#sha256=4266...">timm-1.0.29-py3-none-any.whl</a>
    """
    parser = _Anchors()
    parser.feed(text)
    return [n for n in parser.names if n.endswith(".whl")]


def _read_url(url: str, timeout: float) -> str | None:
    if url.startswith("file:"):
        path = _file_path(url)
        if path.is_dir():
            index = path / "index.html"
            return index.read_text(encoding="utf-8", errors="replace") if index.exists() else None
        return None
    try:
        with urllib.request.urlopen(_request(url), timeout=timeout) as resp:  # noqa: S310
            return resp.read().decode("utf-8", errors="replace")
    except _NET_ERRORS:
        return None


@dataclass(frozen=True)
class IndexFile:
    url: str  # absolute; with the index's userinfo only when it is on the index's own host
    sha256: str | None  # the index's #sha256= fragment, when it publishes one


def index_file(
    sources: tuple[str, ...], project: str, filename: str, timeout: float = 10.0
) -> IndexFile | None:
    """Where the first index that lists `filename` has it, and the sha256 it gives for it.

    Sample (PyPI's https://pypi.org/simple/llama-cpp-python/, one anchor):
      <a href="https://files.pythonhosted.org/packages/.../llama_cpp_python-0.3.36.tar.gz#sha256=..."
    """
    for src in sources:
        if "://" not in src:
            continue  # a find-links directory publishes no hashes
        page_url = f"{src.rstrip('/')}/{canonicalize_name(project)}/"
        page = _read_url(page_url, timeout)
        if page is None:
            continue
        parser = _Anchors()
        parser.feed(page)
        if filename in parser.hrefs:
            return IndexFile(_absolute(page_url, parser.hrefs[filename]), parser.sha256.get(filename))
    return None


def _absolute(page_url: str, href: str) -> str:
    """`href` against the page; the page's credentials go along only to the page's own host."""
    bare, creds = strip_userinfo(page_url)
    url = urllib.parse.urljoin(bare, href)
    if creds is None:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.netloc != urllib.parse.urlsplit(bare).netloc:
        return url
    user, password = (urllib.parse.quote(c, safe="") for c in creds)
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc}"))


def index_sha256(sources: tuple[str, ...], project: str, filename: str, timeout: float = 10.0) -> str | None:
    """The sha256 the first index that lists `filename` gives for it (its #sha256= link fragment)."""
    found = index_file(sources, project, filename, timeout)
    return found.sha256 if found is not None else None


def fetch_file(url: str, dest: Path, timeout: float = 60.0) -> str | None:
    """Download `url` to `dest`; its sha256, or None (and no `dest`) when it cannot be fetched."""
    try:
        if url.startswith("file:"):
            with _file_path(url).open("rb") as body, dest.open("wb") as out:
                return _copy_hashing(body, out)
        with urllib.request.urlopen(_request(url), timeout=timeout) as body, dest.open("wb") as out:  # noqa: S310
            return _copy_hashing(body, out)
    except _NET_ERRORS:
        dest.unlink(missing_ok=True)
        return None


def _copy_hashing(body: IO[bytes], out: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := body.read(1 << 20):
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest()


def list_wheels(sources: tuple[str, ...], project: str, timeout: float = 5.0) -> list[str]:
    """Wheel file names for `project` in find-links (dirs or pages) and simple indexes."""
    names: list[str] = []
    for src in sources:
        local = Path(src) if "://" not in src else None
        if local is not None:
            if local.is_dir():
                names += [p.name for p in local.glob("*.whl")]
            continue
        base = src.rstrip("/")
        # A simple index has one page per project; a find-links URL is one flat page.
        page = _read_url(f"{base}/{canonicalize_name(project)}/", timeout)
        if page is None:
            page = _read_url(src, timeout)
        if page is not None:
            names += wheel_names_in_html(page)
    return [n for n in names if _project_of(n) == canonicalize_name(project)]


def _project_of(filename: str) -> str | None:
    try:
        return parse_wheel_filename(filename)[0]
    except InvalidWheelFilename:
        return None
