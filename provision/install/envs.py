"""Where each environment of a plan lives, and making the ones that do not exist yet.

With --venv ROOT: ROOT/<env name> (the primary one is ROOT/main). Without it: the primary
environment is this interpreter's, and the others (engines whose pins cannot co-install with
Xinference) go under the user's data directory, $XDG_DATA_HOME/xinfer-setup/envs/<name>.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from provision import paths
from provision.errors import OperationFailed
from provision.install.executor import Installer, env_python
from provision.plan import PRIMARY_ENV, Plan


@dataclass(frozen=True)
class EnvLocation:
    name: str
    prefix: Path
    python: Path
    # False for the interpreter running us: never created, never removed.
    managed: bool


def default_env_root(environ=os.environ) -> Path:
    return paths.env_root(environ)


def locate(plan: Plan, venv_root: Path | None, environ=os.environ) -> dict[str, EnvLocation]:
    out = {}
    for env in plan.environments:
        if venv_root is not None:
            prefix = Path(venv_root).absolute() / env.name
        elif env.name == PRIMARY_ENV:
            out[env.name] = EnvLocation(env.name, Path(sys.prefix), Path(sys.executable), managed=False)
            continue
        else:
            prefix = default_env_root(environ) / env.name
        out[env.name] = EnvLocation(env.name, prefix, env_python(prefix), managed=True)
    return out


def ensure_env(loc: EnvLocation, installer: Installer, python_version: str | None) -> bool:
    """Create the environment when it is missing; True when it was created now."""
    if loc.python.exists() or not loc.managed:
        return False
    loc.prefix.parent.mkdir(parents=True, exist_ok=True)
    # A version the plan asks for goes to uv as "3.12"; otherwise the interpreter running us.
    base = python_version if (python_version and installer.kind == "uv") else sys.executable
    out = subprocess.run(installer.venv_argv(loc.prefix, base), capture_output=True, text=True)
    if out.returncode != 0 or not loc.python.exists():
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise OperationFailed(f"cannot create the environment {loc.prefix}: {last}")
    return True
