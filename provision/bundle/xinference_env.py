"""Xinference's per-model virtualenvs, offline, from a bundle.

Xinference 4.1.0 (xinference/core/virtual_env_manager.py, worker.py, utils.py) at a launch with
virtualenv mode on makes `uv venv --system-site-packages` per model and installs there only
what the parent environment lacks. Offline that needs:
- XINFERENCE_VIRTUAL_ENV_OFFLINE_INSTALL=1, which refuses to start without a private index_url;
  Xinference reads it from `python -m pip config list` (global.index-url), so a pip.conf naming
  the bundle's PEP 503 index (DIR/simple, written by `bundle`) is handed over by PIP_CONFIG_FILE;
- XINFERENCE_VIRTUAL_ENV_FIND_LINKS_ALLOWED_ROOTS, the roots a launch request's
  virtual_env_find_links may name: the bundle's wheels;
- UV_OFFLINE=1, so a package missing from the bundle fails in under a second instead of after
  uv's DNS retries (measured: ~20 s).
The pip.conf blanks extra-index-url and find-links: pip merges its config files, and a site's
own mirrors must not stand in for the bundle.
"""

from __future__ import annotations

import html
import urllib.parse
from collections import defaultdict
from pathlib import Path

from packaging.utils import canonicalize_name

from provision.bundle.lock import project_of
from provision.bundle.manifest import sha256_of

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


def xinference_offline_env(bundle_dir: str | Path, conf_dir: str | Path) -> dict[str, str]:
    """Variables for an xinference-local process so its per-model virtualenvs install from the
    bundle with no network. Writes conf_dir/pip.conf (the bundle itself may be read-only)."""
    bundle = Path(bundle_dir).absolute()
    wheels = bundle / "wheels"
    conf = Path(conf_dir).absolute() / "pip.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        "# written by xinfer-setup: Xinference's virtualenvs install from the bundle only\n"
        "[global]\n"
        f"index-url = {(bundle / SIMPLE).as_uri()}/\n"
        "extra-index-url =\n"
        f"find-links = {wheels}\n"
    )
    return {
        "XINFERENCE_VIRTUAL_ENV_OFFLINE_INSTALL": "1",
        "XINFERENCE_VIRTUAL_ENV_FIND_LINKS_ALLOWED_ROOTS": str(wheels),
        "PIP_CONFIG_FILE": str(conf),
        "UV_OFFLINE": "1",
    }
