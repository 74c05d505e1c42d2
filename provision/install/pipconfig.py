"""The user's package-index configuration, as pip itself sees it, for pip *and* uv.

uv does not read pip's config files, so a site whose pip.conf points at a mirror, a private CA
or a proxy would silently lose it when uv runs. We ask pip (`python -m pip config list`: pip's
own merge of its files and PIP_* variables) and hand uv the same settings as flags and
variables. pip's answer is cached under the cache directory, keyed by the config files' paths
and mtimes and the PIP_* variables, so a run pays the ~0.4 s once per change; an answer that
holds a credential is never written to disk.

Only where no pip can be run do we read the files ourselves (`read_files`), with pip's rules,
which tests check against pip's own answer on many layouts:
  files   global ($XDG_CONFIG_DIRS/pip/pip.conf, /etc/pip.conf), user (~/.pip/pip.conf,
          $XDG_CONFIG_HOME/pip/pip.conf; skipped when PIP_CONFIG_FILE names an existing file),
          site (<sys.prefix>/pip.conf), then $PIP_CONFIG_FILE; later files override earlier;
          PIP_CONFIG_FILE=os.devnull switches every file off.
  sections  for `pip install`, [install] in *any* file overrides [global] in any file, and
          PIP_* variables override both (pip's ConfigOptionParser: global, install, env).
  keys    section.name with `_` read as `-`.

`pip config list` on this machine (the sample the parser is written against):
    :env:.cert='/etc/ssl/certs/ca-certificates.crt'
    :env:.find-links='/opt/wheels'
    global.constraint='/etc/xdg/pip/constraints.txt'
    global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
"""

from __future__ import annotations

import ast
import configparser
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from provision import paths
from provision.redact import redact

PYPI_SIMPLE = "https://pypi.org/simple"

# The pip options that decide where packages come from and how they are fetched.
KEYS = (
    "index-url",
    "extra-index-url",
    "find-links",
    "constraint",
    "no-index",
    "cert",
    "client-cert",
    "trusted-host",
    "proxy",
)
# uv reads these itself; when the user set one, the matching pip setting must not override it.
_UV_VARS = {
    "index-url": ("UV_INDEX_URL", "UV_DEFAULT_INDEX"),
    "extra-index-url": ("UV_EXTRA_INDEX_URL", "UV_INDEX"),
    "find-links": ("UV_FIND_LINKS",),
    "constraint": ("UV_CONSTRAINT",),
    "no-index": ("UV_NO_INDEX",),
    "trusted-host": ("UV_INSECURE_HOST",),
    "cert": ("SSL_CERT_FILE",),
    "client-cert": ("SSL_CLIENT_CERT",),
    "proxy": ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"),
}


@dataclass(frozen=True)
class IndexConfig:
    """Where packages come from: pip's view, plus what the user passed on our command line."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    no_index: bool = False
    cert: str | None = None
    client_cert: str | None = None
    trusted_hosts: tuple[str, ...] = ()
    proxy: str | None = None
    # pip options the user set for uv through UV_* (or SSL_*/proxy) variables; uv reads those itself.
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
        """Every place a wheel may be found: find-links, then the primary index, then the extras."""
        idx = () if self.no_index else ((self.index_url,) if self.index_url else ()) + self.extra_index_urls
        return self.find_links + idx

    def pip_flags(self) -> list[str]:
        """pip reads its own config; only what the user gave *us* needs passing."""
        flags = ["--index-url", self.cli_index_url] if self.cli_index_url else []
        # A --find-links flag replaces pip's configured ones instead of adding to them: pass all.
        for link in self.find_links if self.cli_find_links else ():
            flags += ["--find-links", link]
        return flags

    def uv_flags(self, first: tuple[str, ...] = ()) -> list[str]:
        """The same sources as uv flags, indexes in priority order (flags beat UV_* variables).

        uv's default strategy, first-index, takes a package from the first index that lists it and
        never pools versions across indexes, so an index named later cannot supply a package an
        earlier one has (the dependency-confusion setup of the torchtriton incident). `first` (the
        planned torch index, xllamacpp's index) go before everything. Then pip's primary index,
        then its extras: a mirror holding only a pure-Python wheel of a version (soundfile 0.14.0
        without its bundled libsndfile, seen here) must not shadow the primary's manylinux wheels.
        find-links are flat directories uv considers beside whichever index it uses.
        """
        flags: list[str] = []
        for url in first:
            flags += ["--index", url]
        if self.no_index and "no-index" not in self.uv_owned:
            flags.append("--no-index")
        primary = self.index_url or PYPI_SIMPLE
        if "extra-index-url" not in self.uv_owned and self.extra_index_urls:
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
        if "trusted-host" not in self.uv_owned:
            for host in self.trusted_hosts:
                flags += ["--allow-insecure-host", host]
        return flags

    def uv_env(self) -> dict[str, str]:
        """Variables that give uv pip's certificate, client certificate and proxy settings."""
        env: dict[str, str] = {}
        if self.cert and "cert" not in self.uv_owned:
            env["SSL_CERT_FILE"] = self.cert
        if self.client_cert and "client-cert" not in self.uv_owned:
            env["SSL_CLIENT_CERT"] = self.client_cert
        if self.proxy and "proxy" not in self.uv_owned:
            env["HTTPS_PROXY"] = env["HTTP_PROXY"] = self.proxy
        return env


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in items if i))


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on", "y", "t")


def _normal(name: str) -> str:
    """pip's key normalisation: index_url and --index-url are index-url."""
    return name.strip().lower().replace("_", "-").lstrip("-")


def effective(items: Mapping[str, str]) -> dict[str, str]:
    """`pip install`'s values from section.key items: global, then install, then :env: wins."""
    out: dict[str, str] = {}
    for section in ("global", "install", ":env:"):
        for key, value in items.items():
            sec, _, name = key.partition(".")
            if sec == section and _normal(name) in KEYS:
                out[_normal(name)] = value
    return out


def from_settings(merged: Mapping[str, str], environ: Mapping[str, str]) -> IndexConfig:
    def words(key: str) -> tuple[str, ...]:
        return _unique(tuple(merged.get(key, "").split()))

    return IndexConfig(
        index_url=merged.get("index-url") or None,
        extra_index_urls=words("extra-index-url"),
        find_links=words("find-links"),
        constraints=words("constraint"),
        no_index=_truthy(merged.get("no-index", "")),
        cert=merged.get("cert") or None,
        client_cert=merged.get("client-cert") or None,
        trusted_hosts=words("trusted-host"),
        proxy=merged.get("proxy") or None,
        uv_owned=frozenset(k for k, names in _UV_VARS.items() if any(environ.get(n) for n in names)),
    )


# ------------------------------------------------------------------ pip's own answer


def parse_config_list(text: str) -> dict[str, str]:
    """`pip config list` lines (`section.key='value'`, the value a Python repr) as a dict."""
    items: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or "." not in key:
            continue
        try:
            items[key.strip()] = str(ast.literal_eval(value.strip()))
        except (ValueError, SyntaxError):
            items[key.strip()] = value.strip().strip("'\"")
    return items


def _cache_key(python: str, environ: Mapping[str, str], prefix: str, home: Path) -> str:
    stamp = []
    for path in config_files(environ, prefix, home, include_user=True):
        try:
            stamp.append([str(path), path.stat().st_mtime_ns])
        except OSError:
            stamp.append([str(path), None])
    pip_vars = sorted((k, v) for k, v in environ.items() if k.startswith(("PIP_", "XDG_CONFIG")))
    payload = json.dumps([python, stamp, pip_vars, str(home)], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def ask_pip(
    python: str, environ: Mapping[str, str], prefix: str, home: Path, cache: Path | None
) -> dict[str, str] | None:
    """pip's merged configuration items, or None when this interpreter has no working pip."""
    key = _cache_key(python, environ, prefix, home)
    cached = cache / f"pip-config-{key}.json" if cache is not None else None
    if cached is not None and cached.is_file():
        try:
            return dict(json.loads(cached.read_text()))
        except (OSError, ValueError):
            pass
    try:
        out = subprocess.run(
            [python, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**environ, "HOME": str(home), "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    items = parse_config_list(out.stdout)
    text = json.dumps(items)
    if cached is not None and redact(text, {}) == text:  # never store a credential
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            os.replace(tmp, cached)
        except OSError:
            pass
    return items


# ------------------------------------------------------------------ pip's rules, for no pip


def config_files(
    environ: Mapping[str, str], prefix: str, home: Path, include_user: bool | None = None
) -> list[Path]:
    """pip's config files in override order (later wins), as pip's Configuration loads them."""
    env_file = environ.get("PIP_CONFIG_FILE")
    if env_file == os.devnull:
        return []
    xdg_dirs = environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs.split(os.pathsep) if d]
    files.append(Path("/etc/pip.conf"))
    if include_user is None:
        # pip skips the user files when PIP_CONFIG_FILE names a file that exists.
        include_user = not (env_file and Path(env_file).exists())
    if include_user:
        files.append(home / ".pip" / "pip.conf")
        files.append(Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf")
    files.append(Path(prefix) / "pip.conf")
    if env_file:
        files.append(Path(env_file))
    return files


def parse_config_text(text: str) -> dict[str, str]:
    """Every section.key of one pip.conf, keys normalised as pip does."""
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return {
        f"{section}.{_normal(name)}": value
        for section in parser.sections()
        for name, value in parser.items(section)
    }


def environ_items(environ: Mapping[str, str]) -> dict[str, str]:
    """PIP_* variables as pip names them (`:env:.find-links`)."""
    return {
        f":env:.{_normal(k[4:])}": v
        for k, v in environ.items()
        if k.startswith("PIP_") and k != "PIP_CONFIG_FILE" and v
    }


def read_files(environ: Mapping[str, str], prefix: str, home: Path) -> dict[str, str]:
    """What `pip config list` would say, from the files and variables, by pip's rules."""
    items: dict[str, str] = {}
    for path in config_files(environ, prefix, home):
        try:
            items.update(parse_config_text(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, configparser.Error):
            continue  # pip skips unreadable files too
    items.update(environ_items(environ))
    return items


def read_index_config(
    environ: Mapping[str, str] | None = None,
    prefix: str | None = None,
    home: Path | None = None,
    python: str | None = None,
    cache: Path | None = None,
    ask: bool = True,
) -> IndexConfig:
    """pip's index configuration: pip's own answer where pip runs, its rules applied otherwise.

    `python` is the interpreter whose pip is asked (default: this one); `prefix` its sys.prefix.
    """
    environ = dict(os.environ if environ is None else environ)
    home = home or Path.home()
    python = python or sys.executable
    prefix = prefix or sys.prefix
    cache = cache if cache is not None else paths.cache_dir(environ)
    items = ask_pip(python, environ, prefix, home, cache) if ask else None
    if items is None:
        items = read_files(environ, prefix, home)
    return from_settings(effective(items), environ)
