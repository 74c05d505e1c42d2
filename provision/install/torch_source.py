"""Where the torch family (torch, torchvision, torchaudio) comes from, for the planned variant.

Order, written down once:
  1. The plan's torch index for the variant (e.g. https://download.pytorch.org/whl/cpu, or the
     user's mirror of it), when it answers a quick request.
  2. Otherwise a build with the variant's local tag (`2.13.0+cpu`, `+cu126`) found in the
     configured find-links and indexes (pip.conf, PIP_*, our flags).
  3. Otherwise a clear failure naming the variant. Never a different variant: a `+cpu` site
     asking for cu126 must not quietly get CPU torch, nor the reverse.
The PyPI default build (no local tag) is right only where the plan says index_url is None.
"""

from __future__ import annotations

import base64
import html.parser
import http.client
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from provision.errors import OperationFailed
from provision.redact import strip_userinfo

TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
# What PyTorch's indexes ship for a torch build besides the family itself: the compiler and the
# CUDA runtime pieces. These come from the planned torch index only (torchtriton showed why).
_FAMILY_PREFIXES = ("triton", "pytorch-triton", "nvidia-")


def is_torch_family(name: str) -> bool:
    n = canonicalize_name(name)
    return n in TORCH_FAMILY or n.startswith(_FAMILY_PREFIXES)


@dataclass(frozen=True)
class TorchSource:
    """How to get the torch family for one environment."""

    variant: str
    # The index to install torch from; None when the build comes from find-links/mirrors.
    index_url: str | None
    # Exact requirement for torch (e.g. "torch==2.13.0+cpu") or the plan's spec ("torch>=2.6").
    torch_requirement: str
    # Companion pins available for the same build, e.g. ("torchvision==0.28.0+cpu",).
    companions: tuple[str, ...]
    reason: str


def _request(url: str, method: str = "GET") -> urllib.request.Request:
    """A request for an index URL; credentials in its userinfo go as Basic auth, as pip sends them.

    urllib cannot open `https://user:pw@host/...` (http.client takes `pw@host` for a port and
    raises InvalidURL), which crashed install for anyone with a credentialed mirror in pip.conf.
    """
    bare, creds = strip_userinfo(url)
    req = urllib.request.Request(bare, method=method)
    if creds is not None:
        token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    return req


# Everything opening an index may raise when the index is down, refuses us or is misspelt.
_NET_ERRORS = (urllib.error.URLError, OSError, ValueError, http.client.HTTPException)


def index_reachable(url: str, timeout: float = 3.0) -> bool:
    """A HEAD of the index page for torch: cheap, and enough to know whether pip/uv could use it."""
    probe = url.rstrip("/") + "/torch/"
    if probe.startswith("file:"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(probe).path)).exists()
    try:
        with urllib.request.urlopen(_request(probe, "HEAD"), timeout=timeout) as resp:  # noqa: S310
            return resp.status < 400
    except _NET_ERRORS:
        return False


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.sha256: dict[str, str] = {}  # file name -> the index's #sha256= fragment

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href") or ""
            url, _, fragment = href.partition("#")
            name = urllib.parse.unquote(url.rsplit("/", 1)[-1])
            self.names.append(name)
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
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        if path.is_dir():
            index = path / "index.html"
            return index.read_text(encoding="utf-8", errors="replace") if index.exists() else None
        return None
    try:
        with urllib.request.urlopen(_request(url), timeout=timeout) as resp:  # noqa: S310
            return resp.read().decode("utf-8", errors="replace")
    except _NET_ERRORS:
        return None


def index_sha256(sources: tuple[str, ...], project: str, filename: str, timeout: float = 10.0) -> str | None:
    """The sha256 the first index that lists `filename` gives for it (its #sha256= link fragment)."""
    for src in sources:
        if "://" not in src:
            continue  # a find-links directory publishes no hashes
        page = _read_url(f"{src.rstrip('/')}/{canonicalize_name(project)}/", timeout)
        if page is None:
            continue
        parser = _Anchors()
        parser.feed(page)
        if filename in parser.sha256:
            return parser.sha256[filename]
    return None


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


def pick_build(filenames: list[str], variant: str, spec: str, python_tag: str, arch: str) -> Version | None:
    """The newest version among `filenames` with local tag == variant, for this Python and arch."""
    best: Version | None = None
    specifier = SpecifierSet(spec or "")
    for name in filenames:
        try:
            _, version, _, tags = parse_wheel_filename(name)
        except InvalidWheelFilename:
            continue
        if version.local != variant:
            continue
        if not any(t.interpreter in (python_tag, "py3") and arch in t.platform for t in tags):
            continue
        # A local version matches "==2.13.0" by PEP 440; strip the tag for range specifiers.
        if not specifier.contains(Version(version.public), prereleases=True):
            continue
        if best is None or version > best:
            best = version
    return best


def companion_minor(torch_version: Version, project: str) -> str:
    """The release series of a companion built for this torch: 2.13 -> torchvision 0.28.

    PyTorch's release matrix since torch 2.0 / torchvision 0.15; torchaudio follows torch's number.
    A companion built for another torch fails to load its C++ ops.
    """
    if project == "torchvision":
        return f"0.{torch_version.minor + 15}"
    return f"{torch_version.major}.{torch_version.minor}"


def local_build_source(
    variant: str, spec: str | None, sources: tuple[str, ...], python_tag: str, arch: str
) -> TorchSource:
    """Step 2 of the order: a matching local-tagged build from the configured mirrors."""
    torch = pick_build(list_wheels(sources, "torch"), variant, spec or "", python_tag, arch)
    if torch is None:
        where = ", ".join(sources) or "no find-links or index configured"
        raise OperationFailed(
            f"no torch build for variant '{variant}' (torch{spec or ''}+{variant}, {python_tag}, {arch}) "
            f"is reachable: the PyTorch index is unreachable and none was found in {where}; "
            f"put a torch-*+{variant} wheel in a find-links directory or pass --torch-index-url MIRROR"
        )
    companions = []
    for project in ("torchvision", "torchaudio"):
        series = companion_minor(torch, project)
        found = pick_build(list_wheels(sources, project), variant, f"=={series}.*", python_tag, arch)
        if found is not None:
            companions.append(f"{project}=={found}")
    return TorchSource(
        variant=variant,
        index_url=None,
        torch_requirement=f"torch=={torch}",
        companions=tuple(companions),
        reason=f"the torch index is unreachable; torch {torch} found in the configured find-links/indexes",
    )


def resolve_torch_source(
    variant: str,
    planned_index: str | None,
    spec: str | None,
    sources: tuple[str, ...],
    python_tag: str,
    arch: str,
    reachable=index_reachable,
) -> TorchSource:
    """Apply the order in the module docstring to one environment's torch choice."""
    if planned_index is None:
        return TorchSource(variant, None, f"torch{spec or ''}", (), "the default index carries this variant")
    if reachable(planned_index):
        found = local_build_source(variant, spec, (planned_index, *sources), python_tag, arch)
        return TorchSource(
            variant, planned_index, found.torch_requirement, found.companions, f"from {planned_index}"
        )
    return local_build_source(variant, spec, sources, python_tag, arch)
