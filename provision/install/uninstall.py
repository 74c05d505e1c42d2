"""Removing one backend: from its environment (or the environment itself, when it has it to
itself), then from the receipt, so the record and the disk keep agreeing.

What another installed backend still needs is not removed: transformers under xinference[transformers]
stays until xinference goes. Dependencies the removed backend brought in and nothing else uses are
left in place (removing them safely is a resolver's job, and a later install reuses them).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from provision.errors import OperationFailed, UserError
from provision.install import state as state_mod
from provision.install.executor import Installer
from provision.install.ledger import drop_backend
from provision.install.receipt import BACKEND_DISTS, Receipt, backend_dist, write_receipt
from provision.plan import PRIMARY_ENV


@dataclass(frozen=True)
class Removal:
    backend: str
    version: str | None
    environment: str
    prefix: Path
    env_removed: bool


def plan_removal(receipt: Receipt, backend: str, state: state_mod.EnvState) -> tuple[str, bool]:
    """(distribution to remove, whether the whole environment goes). Raises UserError when the
    backend is not recorded, or another installed backend needs it."""
    rec = receipt.backend(backend)
    if rec is None or rec.status == "skipped" or rec.environment is None:
        raise _not_installed(receipt, backend)
    dist = canonicalize_name(backend_dist(backend, rec.packages))
    others = [
        b
        for b in receipt.backends
        if b.name != backend and b.status == "installed" and b.environment == rec.environment
    ]
    for other in others:
        roots = other.packages or [BACKEND_DISTS.get(other.name, other.name)]
        if dist in {canonicalize_name(n) for n in state_mod.closure(roots, state)}:
            raise UserError(
                f"{backend} is needed by {other.name} ({', '.join(roots)}) in the environment "
                f"{rec.environment}: uninstall {other.name} first, or keep {backend}"
            )
    env_removed = rec.environment != PRIMARY_ENV and not others
    return dist, env_removed


def uninstall_backend(
    receipt: Receipt, backend: str, installer: Installer, receipt_prefix: Path, managed_root: Path
) -> Removal:
    rec = receipt.backend(backend)
    env = receipt.environment(rec.environment) if rec and rec.environment else None
    if rec is None or rec.status == "skipped" or env is None:
        raise _not_installed(receipt, backend)
    python, prefix = Path(env.python), Path(env.prefix)
    state = state_mod.read_state(python) if python.exists() else state_mod.EnvState({}, {})
    dist, env_removed = plan_removal(receipt, backend, state)
    # Only an environment of our own making is deleted whole, never the interpreter running us.
    if env_removed and not _inside(prefix, managed_root):
        env_removed = False
    if env_removed:
        shutil.rmtree(prefix)
        env_after = None
    else:
        if state.get(dist) is not None:
            out = subprocess.run(installer.uninstall_argv(python, [dist]), capture_output=True, text=True)
            if out.returncode != 0:
                last = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
                raise OperationFailed(f"uninstalling {dist} from {prefix} failed: {last}")
        env_after = dataclasses.replace(env, packages=state_mod.read_state(python).frozen())
    write_receipt(drop_backend(receipt, backend, env_removed, env_after), receipt_prefix)
    return Removal(backend, rec.version, env.name, prefix, env_removed)


def _not_installed(receipt: Receipt, backend: str) -> UserError:
    recorded = ", ".join(b.name for b in receipt.backends if b.status != "skipped") or "none"
    return UserError(f"{backend} is not installed under this root (recorded: {recorded})")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False
