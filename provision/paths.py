"""Every directory xinfer-setup reads or writes for a user, in one place.

The XDG base-directory variables are honoured, with the usual fallbacks under $HOME, so a
container or a CI job can move everything by setting XDG_DATA_HOME / XDG_CACHE_HOME /
XDG_STATE_HOME. Nothing here creates a directory: callers do, when they write.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

APP = "xinfer-setup"


def _xdg(var: str, fallback: tuple[str, ...], environ: Mapping[str, str]) -> Path:
    base = environ.get(var)
    return Path(base) if base else Path.home().joinpath(*fallback)


def data_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Long-lived data: the engine environments that cannot share Xinference's."""
    return _xdg("XDG_DATA_HOME", (".local", "share"), environ) / APP


def cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Rebuildable data: the llama-cpp-python wheelhouse, unpacked sources, tiny models."""
    return _xdg("XDG_CACHE_HOME", (".cache",), environ) / APP


def state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Run state: serve's working directories, logs and pid files."""
    return _xdg("XDG_STATE_HOME", (".local", "state"), environ) / APP


def last_root_file(environ: Mapping[str, str] = os.environ) -> Path:
    """The --venv ROOT the last install used (empty: none), so a command run without --venv can
    say where the engines are."""
    return state_dir(environ) / "last-root"


def env_root(environ: Mapping[str, str] = os.environ) -> Path:
    """Where engine environments go when no --venv ROOT is given."""
    return data_dir(environ) / "envs"


def models_cache(environ: Mapping[str, str] = os.environ) -> Path:
    """Locally generated tiny models, keyed by the hash of their inputs."""
    return cache_dir(environ) / "models"


def serve_run_dir(kind: str, port: int, environ: Mapping[str, str] = os.environ) -> Path:
    return state_dir(environ) / "serve" / f"{kind}-{port}"
