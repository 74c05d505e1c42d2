"""Command lines for the installers (uv first, pip as the fallback) and for making environments.

Building argv is pure, so the translation of the user's index config into each installer's
flags is tested without running anything; running them is one small function.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from provision.errors import UserError

if TYPE_CHECKING:  # a type only here; pipconfig's parsing is not needed to name an installer
    from provision.install.pipconfig import IndexConfig

INSTALLERS = ("uv", "pip")


def uv_bin() -> str | None:
    """uv's binary from the `uv` wheel (a dependency of this tool), else one on PATH."""
    try:
        import uv

        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


InstallerKind = Literal["uv", "pip"]


def choose_installer(requested: str | None) -> InstallerKind:
    if requested is not None and requested not in INSTALLERS:
        raise UserError(f"unknown installer '{requested}' (choose uv or pip)")
    if requested == "pip":
        return "pip"
    if uv_bin() is None:
        if requested == "uv":
            raise UserError(
                "--installer uv: uv is not installed here (pip install uv, or use --installer pip)"
            )
        return "pip"
    return "uv"


def env_python(prefix: Path) -> Path:
    return prefix / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@dataclass(frozen=True)
class Installer:
    kind: InstallerKind
    index: IndexConfig

    def _index_flags(self, first_indexes: tuple[str, ...], exclusive: bool = False) -> list[str]:
        """Index flags; `first_indexes` (the planned torch index, xllamacpp's) are asked first.

        uv keeps its default first-index strategy: a package comes from the first index that has it,
        never the highest version pooled across indexes (no unsafe-best-match, ever). pip can only
        pool its indexes, so where a source must be the only one (`exclusive`: the torch step) pip
        gets that index alone, with the configured find-links, as PyTorch's own instructions do.
        """
        if self.kind == "uv":
            return self.index.uv_flags(first=first_indexes)
        flags = self.index.pip_flags()
        if first_indexes and exclusive:
            flags = ["--index-url", first_indexes[0]]
            for url in first_indexes[1:]:
                flags += ["--extra-index-url", url]
            for link in self.index.find_links:
                flags += ["--find-links", link]
            return flags
        if first_indexes:
            # A command-line --extra-index-url replaces pip's configured ones: pass them all.
            for url in (*first_indexes, *self.index.extra_index_urls):
                flags += ["--extra-index-url", url]
        return flags

    def env(self) -> dict[str, str]:
        """Variables the installer needs beside os.environ (pip's cert/proxy settings, for uv)."""
        return self.index.uv_env() if self.kind == "uv" else {}

    def build_flags(self) -> list[str]:
        """Index flags for `uv build` (its build environment); constraints apply to that env too."""
        flags = self._index_flags(())
        return ["--build-constraint" if f == "--constraint" else f for f in flags]

    def install_argv(
        self,
        python: Path,
        requirements: list[str],
        constraints: Path | None = None,
        extra_index_urls: tuple[str, ...] = (),
        exclusive: bool = False,
        reinstall: tuple[str, ...] = (),
        excludes: Path | None = None,
    ) -> list[str]:
        """excludes: a requirements file of projects left out of the resolution (uv only; pip has
        no such option, so the caller removes them afterwards)."""
        if self.kind == "uv":
            argv = [uv_bin() or "uv", "pip", "install", "--python", str(python)]
        else:
            argv = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
        argv += self._index_flags(extra_index_urls, exclusive)
        # Named packages only: a blanket reinstall would fetch torch again, from indexes that may
        # not carry its variant. (pip cannot name them: it gets --force-reinstall without deps.)
        for name in reinstall if self.kind == "uv" else ():
            argv += ["--reinstall-package", name]
        if reinstall and self.kind == "pip":
            argv += ["--force-reinstall", "--no-deps"]
        if constraints is not None:
            argv += ["--constraint", str(constraints)]
        if excludes is not None and self.kind == "uv":
            argv += ["--excludes", str(excludes)]
        return argv + list(requirements)

    def uninstall_argv(self, python: Path, names: list[str]) -> list[str]:
        if self.kind == "uv":
            return [uv_bin() or "uv", "pip", "uninstall", "--python", str(python), *names]
        return [str(python), "-m", "pip", "uninstall", "-y", *names]

    def venv_argv(self, prefix: Path, base_python: str | None = None) -> list[str]:
        if self.kind == "uv":
            return [uv_bin() or "uv", "venv", "--python", base_python or sys.executable, str(prefix)]
        # pip installs into an environment with its own pip, so it needs the seeded venv.
        return [base_python or sys.executable, "-m", "venv", str(prefix)]


def uv_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """Where uv keeps its cache: UV_CACHE_DIR, else $XDG_CACHE_HOME/uv, else ~/.cache/uv (uv's docs)."""
    env = os.environ if environ is None else environ
    if env.get("UV_CACHE_DIR"):
        return Path(env["UV_CACHE_DIR"])
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uv"
