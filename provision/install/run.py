"""Carry a plan out: environments, torch from the right place, each backend, verify, receipt.

Unless the receipt and the disk already satisfy the plan (noop.py), per environment, in this order:
  1. the environment exists and can be read (env_step);
  2. the torch family, from the planned variant's index or a matching local-tagged build (torch_step);
  3. each backend in plan order, with torch (and a matching torchvision) held by constraints so
     no later step swaps the build (backend_step); the llama-cpp-python source build comes from our
     wheelhouse, started in the background at the outset (build_step);
  4. a torchvision that does not match torch is replaced by a matching build or removed (torch_step);
  5. verify (verify_step), then the receipt (record; written after every environment, so an
     interrupted run leaves an accurate one and a re-run resumes).
A step whose requirements are already met is skipped, so a second run costs one listing per
environment plus verify.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from provision.errors import OperationFailed
from provision.install.backend_step import env_extras, install_backend
from provision.install.build_step import SourceBuilds, wheel_build_request
from provision.install.context import InstallOptions, RunContext
from provision.install.disk import check_free_disk, estimate_disk_mb, same_file_system
from provision.install.env_step import prepare_env
from provision.install.executor import InstallerKind, uv_cache_dir
from provision.install.fingerprint import installed_fingerprint
from provision.install.noop import UNCHANGED_NOTE, unchanged_receipt
from provision.install.pin_check import check_pins
from provision.install.progress import Reporter
from provision.install.receipt import Receipt
from provision.install.record import dist_name
from provision.install.torch_step import TorchStep, family_pins, fix_torchvision, torch_step
from provision.install.verify_step import expectation, verify_env, verify_environment
from provision.plan import Environment, Plan
from provision.requirements import merge_pins

# Imported from here by the commands, bundles, the fleet and smoke's GPU check.
__all__ = [
    "InstallOptions",
    "env_extras",
    "expectation",
    "family_pins",
    "install_plan",
    "verify_environment",
    "wheel_build_request",
]


def install_plan(
    plan: Plan,
    venv_root: Path | None = None,
    installer: InstallerKind = "uv",
    *,
    options: InstallOptions | None = None,
    reporter: Reporter | None = None,
) -> Receipt:
    """Install every backend the plan says to install; returns the receipt (also written to disk).

    Raises OperationFailed only for whole-run refusals (disk); a backend that fails is recorded
    in the receipt with status "failed" and the others carry on.
    """
    opts = options or InstallOptions()
    opts.venv_root = venv_root if venv_root is not None else opts.venv_root
    opts.installer = installer or opts.installer
    reporter = reporter or Reporter()
    from provision.lock import root_lock

    with root_lock(opts.venv_root, wait=opts.wait, say=reporter.say):
        kept = unchanged_receipt(plan, opts.venv_root, opts.installer, bool(opts.replay_pins))
        if kept is not None:
            reporter.say(UNCHANGED_NOTE)
            return kept
        return _install_locked(plan, opts, reporter)


def _install_locked(plan: Plan, opts: InstallOptions, reporter: Reporter) -> Receipt:
    ctx = RunContext(plan, opts, reporter)
    if not opts.offline and not opts.replay_pins:  # class 18: a partial mirror, named before any change
        check_pins(plan, ctx.index, reporter.say)
    if opts.check_disk:
        todo = [
            b.name
            for b in plan.installs
            if b.environment is not None and not ctx.state(ctx.locations[b.environment]).get(dist_name(b))
        ]
        if todo:
            # uv hard-links from its cache (its default on Linux) where the cache shares the roots'
            # file system: a torch build two environments use is stored once.
            shared = opts.installer == "uv" and same_file_system(uv_cache_dir(), ctx.primary.prefix)
            check_free_disk(
                estimate_disk_mb(plan, todo, shared_builds=shared),
                [ctx.locations[e.name].prefix for e in plan.environments] + [ctx.cache],
            )
    builds = SourceBuilds(ctx)
    try:
        builds.start()
        for env in plan.environments:
            _install_env(ctx, builds, env)
    finally:
        builds.close()
        path = ctx.record.save()
        reporter.say(f"receipt: {path}")
    return ctx.record.receipt()


def _install_env(ctx: RunContext, builds: SourceBuilds, env: Environment) -> None:
    loc = ctx.locations[env.name]
    # Source builds last: their wheel may still be building in the background.
    backends = sorted(
        (b for b in ctx.plan.installs if b.environment == env.name), key=lambda b: b.build is not None
    )
    if not backends:
        return
    current = prepare_env(ctx, env, loc)
    record = ctx.record
    try:
        torch = torch_step(ctx, env, loc, current) if env.torch is not None else TorchStep([], {})
    except OperationFailed as e:
        for b in backends:
            record.backends[b.name].status, record.backends[b.name].reason = "failed", str(e)
        ctx.reporter.say(f"[{env.name}] {e}")
        return
    if env.torch is not None:
        record.envs[env.name].torch = torch.record
    pins = torch.pins + ctx.opts.replay_pins.get(env.name, [])
    with tempfile.TemporaryDirectory(prefix="xinfer-setup-") as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(merge_pins(pins)) + "\n")
        extras = env_extras(env, ctx.plan)
        for i, backend in enumerate(backends):
            install_backend(ctx, builds, env, loc, backend, constraints, extras if i == 0 else [])
    fix_torchvision(ctx, env, loc, torch.source)
    verify_env(ctx, env, loc)
    # After verify: nothing of ours touches the install markers past this point.
    record.envs[env.name].installed_fingerprint = installed_fingerprint(loc.prefix)
    record.finished.add(env.name)
