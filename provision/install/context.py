"""What every step of one install run reads: the plan and options, the installer, where each
environment lives, a listing of each environment's packages, and the one way a step runs a command
(the receipt's checkpoint first, then the listing is stale).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from provision.install import state as state_mod
from provision.install import wheelhouse
from provision.install.envs import EnvLocation, locate
from provision.install.executor import Installer, InstallerKind
from provision.install.pipconfig import IndexConfig, read_index_config
from provision.install.progress import Reporter
from provision.install.record import RunRecord
from provision.plan import PRIMARY_ENV, Plan
from provision.profile import HostProfile


@dataclass
class InstallOptions:
    venv_root: Path | None = None
    installer: InstallerKind = "uv"
    index: IndexConfig | None = None
    # env name -> exact pins (name==version) from a receipt being replayed.
    replay_pins: dict[str, list[str]] = field(default_factory=dict)
    # backend -> {dist: "sha256=<hex>"} from a receipt being replayed: those files and no others.
    replay_hashes: dict[str, dict[str, str]] = field(default_factory=dict)
    cache_dir: Path | None = None
    check_disk: bool = True
    # Another run holding the root: wait for it (saying so), or fail at once naming its pid.
    wait: bool = True
    # Installing from a bundle: no index is asked, not even whether the torch index answers.
    offline: bool = False
    # `install --profile TARGET`: this host's profile. It builds (its libc and compiler go into the
    # wheelhouse key) and is recorded as built_on; the target's GPUs decide what is built.
    builder: HostProfile | None = None


class RunContext:
    def __init__(self, plan: Plan, opts: InstallOptions, reporter: Reporter) -> None:
        self.plan = plan
        self.opts = opts
        self.reporter = reporter
        self.index = opts.index or read_index_config()
        self.installer = Installer(opts.installer, self.index)
        self.locations = locate(plan, opts.venv_root)
        self.cache = opts.cache_dir or wheelhouse.cache_root()
        self._states: dict[str, state_mod.EnvState] = {}
        self.record = RunRecord.start(plan, opts.installer, self.locations, self.primary.prefix, reporter)
        self.record.builder = opts.builder

    @property
    def primary(self) -> EnvLocation:
        return self.locations.get(PRIMARY_ENV) or next(iter(self.locations.values()))

    def state(self, loc: EnvLocation) -> state_mod.EnvState:
        """The environment's packages, listed again only after a command that may have changed them."""
        if loc.name not in self._states:
            self._states[loc.name] = state_mod.read_state(loc.python)
        return self._states[loc.name]

    def forget(self, env_name: str) -> None:
        """The environment changed outside a command run here (created, records removed): list it again."""
        self._states.pop(env_name, None)

    def run(self, argv: list[str], what: str, env: str | None = None) -> subprocess.CompletedProcess:
        # The checkpoint first: once the step is announced, the receipt claims nothing it may undo.
        if env is not None:
            self.record.checkpoint(env)
        self.reporter.say(what)
        self._states.clear()
        # pip's cert/proxy settings reach uv as variables (uv does not read pip.conf).
        return subprocess.run(
            argv, capture_output=True, text=True, env={**os.environ, **self.installer.env()}
        )


def fail_text(out: subprocess.CompletedProcess) -> str:
    """The command's last few lines of output, for a one-line reason."""
    lines = [ln for ln in (out.stderr or out.stdout or "").strip().splitlines() if ln.strip()]
    return " | ".join(lines[-4:])[-800:] or f"exit {out.returncode}"
