"""The user's package-index configuration, read the way pip reads it, for pip *and* uv.

uv does not read pip's config files, so a site whose pip.conf points at a mirror or a
local wheel directory would silently lose it when uv runs. We read pip's files and
PIP_* variables once, here, and hand uv the same sources as flags.

Where pip looks (pip's documented order; later overrides earlier, variables last):
  global  $XDG_CONFIG_DIRS/pip/pip.conf (default /etc/xdg/pip/pip.conf), then /etc/pip.conf
  user    ~/.pip/pip.conf (legacy), then $XDG_CONFIG_HOME/pip/pip.conf (~/.config/pip/pip.conf)
  site    <sys.prefix>/pip.conf
  env     $PIP_CONFIG_FILE  (os.devnull switches every file off)
  vars    PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_CONSTRAINT, PIP_NO_INDEX
In each file the [install] section overrides [global] for `pip install`.

`pip config debug` on this machine, the real sample the tests compare against:
    env_var:
      PIP_FIND_LINKS='/opt/wheels'
    global:
      /etc/xdg/pip/pip.conf, exists: True
        global.constraint: /etc/xdg/pip/constraints.txt
      /etc/pip.conf, exists: True
        global.constraint: /etc/xdg/pip/constraints.txt
    user:
      /root/.config/pip/pip.conf, exists: True
        global.find-links: /opt/wheels
        global.extra-index-url: file:///opt/pypi/simple file:///opt/pypi-more/simple
"""

from __future__ import annotations

import configparser
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

# pip option name -> our field. Values of list options are whitespace-separated.
PYPI_SIMPLE = "https://pypi.org/simple"

_KEYS = ("index-url", "extra-index-url", "find-links", "constraint", "no-index")
# uv reads these itself; when the user set one, the matching pip setting must not override it.
_UV_VARS = {
    "index-url": ("UV_INDEX_URL", "UV_DEFAULT_INDEX"),
    "extra-index-url": ("UV_EXTRA_INDEX_URL", "UV_INDEX"),
    "find-links": ("UV_FIND_LINKS",),
    "constraint": ("UV_CONSTRAINT",),
    "no-index": ("UV_NO_INDEX",),
}


@dataclass(frozen=True)
class IndexConfig:
    """Where packages come from: pip's view, plus what the user passed on our command line."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    no_index: bool = False
    # pip options the user set for uv through UV_* variables; uv reads those itself.
    uv_owned: frozenset[str] = field(default_factory=frozenset)
    # What the user gave our own command line; pip needs these as flags, its config it reads itself.
    cli_index_url: str | None = None
    cli_find_links: tuple[str, ...] = ()

    def with_cli(self, index_url: str | None, find_links: tuple[str, ...]) -> IndexConfig:
        """Our --index-url replaces pip's; our --find-links come before pip's."""
        return replace(
            self,
            index_url=index_url or self.index_url,
            find_links=_unique(tuple(find_links) + self.find_links),
            cli_index_url=index_url,
            cli_find_links=tuple(find_links),
            uv_owned=self.uv_owned - ({"index-url"} if index_url else set()),
        )

    @property
    def sources(self) -> tuple[str, ...]:
        """Every place a wheel may be found, in pip's order of preference (find-links are equal peers)."""
        idx = () if self.no_index else ((self.index_url,) if self.index_url else ()) + self.extra_index_urls
        return self.find_links + idx

    def pip_flags(self) -> list[str]:
        """pip reads its own config; only what the user gave *us* needs passing."""
        flags = ["--index-url", self.cli_index_url] if self.cli_index_url else []
        # A --find-links flag replaces pip's configured ones instead of adding to them: pass all.
        for link in self.find_links if self.cli_find_links else ():
            flags += ["--find-links", link]
        return flags

    def uv_flags(self) -> list[str]:
        """The same sources as uv command-line flags (flags beat UV_* variables, so skip those set)."""
        flags: list[str] = []
        if self.no_index and "no-index" not in self.uv_owned:
            flags.append("--no-index")
        primary = self.index_url or PYPI_SIMPLE
        if "extra-index-url" not in self.uv_owned and self.extra_index_urls:
            # uv asks --index entries in the order given and, for a version two indexes both carry,
            # takes the first one's files only. pip pools every index's files and picks the most
            # specific wheel, so a mirror that holds only a version's pure-Python wheel (soundfile
            # without its bundled libsndfile, seen here) must not shadow the primary index's
            # manylinux wheels: the primary goes first, the extras after it.
            flags += ["--index", primary] if "index-url" not in self.uv_owned else []
            for url in self.extra_index_urls:
                flags += ["--index", url]
        if self.index_url and "index-url" not in self.uv_owned:
            flags += ["--default-index", self.index_url]
        if "find-links" not in self.uv_owned:
            for link in self.find_links:
                flags += ["--find-links", link]
        if "constraint" not in self.uv_owned:
            for c in self.constraints:
                flags += ["--constraint", c]
        if self.extra_index_urls or self.find_links:
            # pip takes the best version across all sources; uv's default stops at the first index
            # that has the package, which would hide a mirror's newer build.
            flags += ["--index-strategy", "unsafe-best-match"]
        return flags


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


def config_files(environ: Mapping[str, str], prefix: str, home: Path) -> list[Path]:
    """pip's config files in override order (later wins), per pip's documentation."""
    env_file = environ.get("PIP_CONFIG_FILE")
    if env_file == os.devnull:
        return []
    xdg_dirs = environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs.split(os.pathsep) if d]
    files.append(Path("/etc/pip.conf"))
    files.append(home / ".pip" / "pip.conf")
    files.append(Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf")
    files.append(Path(prefix) / "pip.conf")
    if env_file:
        files.append(Path(env_file))
    return files


def parse_config_text(text: str) -> dict[str, str]:
    """The index settings of one pip.conf: [global] overridden by [install]."""
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    out: dict[str, str] = {}
    for section in ("global", "install"):
        if parser.has_section(section):
            for key in _KEYS:
                # pip accepts underscores too (index_url) in files.
                for spelling in (key, key.replace("-", "_")):
                    if parser.has_option(section, spelling):
                        out[key] = parser.get(section, spelling)
    return out


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def merge(settings: list[dict[str, str]], environ: Mapping[str, str]) -> IndexConfig:
    """Fold file settings (in override order) and PIP_* variables into one IndexConfig."""
    merged: dict[str, str] = {}
    for s in settings:
        merged.update(s)
    for key in _KEYS:
        var = "PIP_" + key.replace("-", "_").upper()
        if environ.get(var):
            merged[key] = environ[var]
    return IndexConfig(
        index_url=merged.get("index-url") or None,
        extra_index_urls=_unique(tuple(merged.get("extra-index-url", "").split())),
        find_links=_unique(tuple(merged.get("find-links", "").split())),
        constraints=_unique(tuple(merged.get("constraint", "").split())),
        no_index=_truthy(merged.get("no-index", "")),
        uv_owned=frozenset(k for k, names in _UV_VARS.items() if any(environ.get(n) for n in names)),
    )


def read_index_config(
    environ: Mapping[str, str] | None = None, prefix: str | None = None, home: Path | None = None
) -> IndexConfig:
    environ = os.environ if environ is None else environ
    settings = []
    for path in config_files(environ, prefix or sys.prefix, home or Path.home()):
        try:
            settings.append(parse_config_text(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, configparser.Error):
            continue  # pip skips unreadable files too
    return merge(settings, environ)
