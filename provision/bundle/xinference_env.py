"""Xinference's per-model virtualenvs, offline, from a bundle.

Xinference 4.1.0 (xinference/core/virtual_env_manager.py, worker.py, utils.py) at a launch with
virtualenv mode on makes `uv venv --system-site-packages` per model and installs there, with
uv, only what the parent environment lacks. Offline that needs (measured in a loopback-only
namespace, tests/test_bundle.py):
- UV_OFFLINE=1 and UV_FIND_LINKS=<bundle>/wheels in the server's environment: uv takes the
  bundle's files and never waits on DNS (without UV_OFFLINE a miss costs ~20 s of retries);
- XINFERENCE_VIRTUAL_ENV_FIND_LINKS_ALLOWED_ROOTS=<bundle>/wheels, so a launch request's
  `virtual_env_find_links` may name the bundle (Xinference refuses other roots, HTTP 400);
- XINFERENCE_VIRTUAL_ENV_OFFLINE_INSTALL=1 (no public fallback at all) only where it can work:
  it refuses to launch without a private index_url, which Xinference reads from
  `<parent python> -m pip config list`. Environments made by uv have no pip, so there it would
  fail every launch; where the parent has pip, a pip.conf naming the bundle's PEP 503 index
  (DIR/simple) goes in by PIP_CONFIG_FILE, with extra-index-url blanked so a site's own mirrors
  do not stand in for the bundle.
"""

from __future__ import annotations

import html
import subprocess
import urllib.parse
from collections import defaultdict
from pathlib import Path

from packaging.utils import canonicalize_name

from provision.bundle.lock import project_of
from provision.bundle.manifest import check_layout, read_manifest, sha256_of

SIMPLE = "simple"


def write_simple_index(bundle: Path, hashes: dict[str, str] | None = None) -> list[Path]:
    """DIR/simple/<project>/index.html for every file in DIR/wheels, with relative links (the
    bundle moves as one folder) and each file's sha256. Returns the pages written."""
    wheels = bundle / "wheels"
    by_project: dict[str, list[Path]] = defaultdict(list)
    for f in sorted(wheels.iterdir()):
        name = project_of(f.name)
        if name and f.is_file():
            by_project[canonicalize_name(name)].append(f)
    root = bundle / SIMPLE
    pages = []
    for project, files in sorted(by_project.items()):
        links = []
        for f in files:
            digest = (hashes or {}).get(f.name) or sha256_of(f)
            href = f"../../wheels/{urllib.parse.quote(f.name)}#sha256={digest}"
            links.append(f'<a href="{html.escape(href)}">{html.escape(f.name)}</a><br>')
        page = root / project / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text("<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n")
        pages.append(page)
    index = root / "index.html"
    index.write_text(
        "<!DOCTYPE html><html><body>\n"
        + "\n".join(f'<a href="{p}/">{p}</a><br>' for p in sorted(by_project))
        + "\n</body></html>\n"
    )
    return [index, *pages]


def xinference_offline_env(
    bundle_dir: str | Path, conf_dir: str | Path, parent_python: str | Path | None = None
) -> dict[str, str]:
    """Variables for an xinference-local process so its per-model virtualenvs install from the
    bundle with no network. parent_python: the environment Xinference runs in (to see whether
    it has pip, see the module docstring). Writes conf_dir/pip.conf (the bundle may be read-only)."""
    bundle = Path(bundle_dir).absolute()
    # uv and pip take any wheel in a find-links folder: one the manifest does not list is refused.
    check_layout(bundle, read_manifest(bundle))
    wheels = bundle / "wheels"
    env = {
        "UV_OFFLINE": "1",
        "UV_FIND_LINKS": str(wheels),
        "XINFERENCE_VIRTUAL_ENV_FIND_LINKS_ALLOWED_ROOTS": str(wheels),
    }
    if parent_python is not None and _has_pip(Path(parent_python)):
        conf = Path(conf_dir).absolute() / "pip.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            "# written by xinfer-setup: Xinference's virtualenvs install from the bundle only\n"
            "[global]\n"
            f"index-url = {(bundle / SIMPLE).as_uri()}/\n"
            "extra-index-url =\n"
            f"find-links = {wheels}\n"
        )
        env |= {"XINFERENCE_VIRTUAL_ENV_OFFLINE_INSTALL": "1", "PIP_CONFIG_FILE": str(conf)}
    return env


def _has_pip(python: Path) -> bool:
    out = subprocess.run([str(python), "-c", "import pip"], capture_output=True)
    return out.returncode == 0
