"""The environment step: an environment the plan installs into exists (created when missing) and
uv can read it (package records half-written by a cut-short install, or whose native files are gone,
dropped); returns its listing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from provision.install import state as state_mod
from provision.install.context import RunContext
from provision.install.envs import EnvLocation, ensure_env
from provision.plan import Environment


def prepare_env(ctx: RunContext, env: Environment, loc: EnvLocation) -> state_mod.EnvState:
    if ensure_env(loc, ctx.installer, env.python):
        ctx.forget(loc.name)
    current = ctx.state(loc)
    if not current.broken:
        return current
    # Half-written package records stop uv from reading the environment at all, and a record whose
    # native libraries were deleted claims what is not there: drop them, so their packages count as
    # missing and the steps that follow install them again.
    for path in current.broken:
        shutil.rmtree(path, ignore_errors=True)
    names = ", ".join(Path(p).name for p in current.broken)
    ctx.reporter.say(
        f"[{env.name}] removed package records that are half-written or miss their native files: {names}"
    )
    ctx.forget(loc.name)
    return ctx.state(loc)
