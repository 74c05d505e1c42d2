"""A backend's step: its packages into its environment, with the torch family held by constraints,
skipped when the environment already satisfies them; the outcome goes into the backend's record.

A backend that fails is recorded "failed" with the reason, and the run carries on with the others.
"""

from __future__ import annotations

import time
from pathlib import Path

from provision.errors import OperationFailed
from provision.install import state as state_mod
from provision.install.build_step import SourceBuilds
from provision.install.context import RunContext, fail_text
from provision.install.envs import EnvLocation
from provision.install.own_index import must_reinstall_from_own_index
from provision.install.record import dist_name
from provision.install.torch_source import TORCH_FAMILY, is_torch_family
from provision.plan import BackendDecision, Environment, Plan
from provision.requirements import requirement_name


def env_extras(env: Environment, plan: Plan) -> list[str]:
    """Requirements of the environment that no backend's package list covers (and not torch)."""
    covered = {requirement_name(p) for b in plan.installs if b.environment == env.name for p in b.packages}
    covered |= set(TORCH_FAMILY)
    return [r for r in env.requirements if requirement_name(r) not in covered]


def install_backend(
    ctx: RunContext,
    builds: SourceBuilds,
    env: Environment,
    loc: EnvLocation,
    backend: BackendDecision,
    constraints: Path,
    extras: list[str],
) -> None:
    rec = ctx.record.backends[backend.name]
    started = time.monotonic()
    current = ctx.state(loc)
    extra_index = tuple(backend.extra_index_urls)
    # A backend whose last install failed or did not verify may have left half-written
    # dependencies (a full disk, a kill) that still look installed: reinstall them, not trust them.
    suspect = ctx.record.suspect(backend.name)
    # class 20: the same version from another index (PyPI's CPU xllamacpp) is not this backend
    previous = ctx.record.previous
    switch = must_reinstall_from_own_index(
        backend, current.get(dist_name(backend)) is not None, previous.plan if previous else None
    )
    try:
        if backend.build is not None:
            reqs = builds.requirement(backend, loc, current, force=suspect)
        else:
            reqs = [p for p in backend.packages if requirement_name(p) not in TORCH_FAMILY] + extras
            left_out = state_mod.deliberately_absent(current) | set(backend.excludes)
            if not suspect and not switch and not state_mod.unmet(reqs, current, frozenset(left_out)):
                reqs = []
        if reqs:
            excludes = None
            if backend.excludes:  # beside the constraints, in the same temporary directory
                excludes = constraints.parent / f"excludes-{backend.name}.txt"
                excludes.write_text("\n".join(backend.excludes) + "\n")
            again: tuple[str, ...] = ()
            if switch and not suspect:
                again = (dist_name(backend),)
                ctx.reporter.say(
                    f"[{env.name}] {backend.name}: the installed copy did not come from "
                    f"{', '.join(backend.extra_index_urls)}; replacing it with that index's wheel"
                )
            if suspect:
                again = tuple(n for n in state_mod.closure(reqs, current) if not is_torch_family(n))
                ctx.reporter.say(f"[{env.name}] {backend.name}: its last install failed; reinstalling")
            out = ctx.run(
                ctx.installer.install_argv(
                    loc.python, reqs, constraints, extra_index, reinstall=again, excludes=excludes
                ),
                f"[{env.name}] installing {backend.name}: {' '.join(reqs)}",
                env.name,
            )
            if out.returncode != 0:
                raise OperationFailed(_unreachable_index(backend, ctx.opts.offline) + fail_text(out))
            _remove_excluded(ctx, env, loc, backend)
            rec.source = rec.source or "package index"
        else:
            rec.source = rec.source or "already installed"
            ctx.reporter.say(f"[{env.name}] {backend.name}: already installed")
    except OperationFailed as e:
        rec.status, rec.reason = "failed", str(e)
        log_path = getattr(e, "log_path", None)  # a failed source build names its log
        rec.log = str(log_path) if log_path else None
        ctx.reporter.say(f"[{env.name}] {backend.name} FAILED: {e}")
    except KeyboardInterrupt:
        rec.status, rec.reason = "failed", "interrupted"
        raise
    else:
        dist = ctx.state(loc).get(dist_name(backend))
        rec.status = "installed" if dist else "failed"
        rec.version = dist.version if dist else rec.version
        # The installer's own record of the file it installed (direct_url.json's archive hash).
        if dist and dist.archive_hash:
            rec.hashes[dist.name] = dist.archive_hash
        rec.reason = None if dist else f"{dist_name(backend)} is not installed after the step"
    finally:
        rec.duration_s = round(time.monotonic() - started, 1)


def _remove_excluded(ctx: RunContext, env: Environment, loc: EnvLocation, backend: BackendDecision) -> None:
    """pip cannot leave a dependency out of a resolution: remove what it pulled against the plan."""
    present = [n for n in backend.excludes if ctx.state(loc).get(n) is not None]
    if not present:
        return
    out = ctx.run(
        ctx.installer.uninstall_argv(loc.python, present),
        f"[{env.name}] removing {', '.join(present)}: the plan leaves them out of {backend.name}",
    )
    if out.returncode != 0:
        raise OperationFailed(fail_text(out))


def _unreachable_index(backend: BackendDecision, offline: bool) -> str:
    """Name a backend's own index when it does not answer (xllamacpp's GPU wheels on GitHub Pages,
    from a host that reaches PyPI only): that, not the resolver's last line, is what to fix."""
    if offline:
        return ""
    from provision.install.index_pages import index_reachable

    down = [u for u in backend.extra_index_urls if not index_reachable(u)]
    return f"its index {', '.join(down)} cannot be reached: " if down else ""
