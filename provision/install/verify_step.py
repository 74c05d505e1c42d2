"""The verify step: what the plan expects of an environment (torch variant, GPU archs, the builds'
backends), checked against what is installed; the findings go into each backend's record. An
environment whose packages and checks match the last verified receipt keeps that receipt's findings.
"""

from __future__ import annotations

from pathlib import Path

from provision.install.context import RunContext
from provision.install.cuda_toolkit import cuobjdump_for
from provision.install.envs import EnvLocation
from provision.install.gpu_libs import add_static_gpu_facts
from provision.install.record import now
from provision.install.verify import (
    Check,
    EnvExpectation,
    checks_fingerprint,
    collect_facts,
    evaluate,
    gpu_archs,
    xllamacpp_build_of,
)
from provision.install.verify_gpu import planned_cuda_archs, wants_cuda
from provision.install.wheelhouse import cache_root
from provision.plan import Environment, Plan
from provision.profile import HostProfile


def expectation(
    plan: Plan, env: Environment, backends: tuple[str, ...], builder: HostProfile | None = None
) -> EnvExpectation:
    """What verify expects of one environment; `builder` is this host when installing for another
    machine's profile (the target's glibc then bounds what was built here)."""
    variant = env.torch.variant if env.torch else None
    llama = plan.backend("llama-cpp-python")
    return EnvExpectation(
        backends=backends,
        torch_variant=variant,
        gpu_archs=gpu_archs(plan.profile, variant),
        llama_backends=tuple(llama.build.expected_backends) if llama and llama.build else (),
        xllamacpp_build=_xllamacpp_build(plan),
        llama_cuda_archs=planned_cuda_archs(tuple(llama.build.cmake_args) if llama and llama.build else ()),
        glibc_floor=plan.profile.os.glibc_version if builder is not None else None,
    )


def _xllamacpp_build(plan: Plan) -> str | None:
    """The xllamacpp build planned, from the wheel index chosen: .../whl/cu128 -> cuda, .../rocm* -> hip."""
    xl = plan.backend("xllamacpp")
    if xl is None or xl.action != "install":
        return None
    return xllamacpp_build_of(tuple(xl.extra_index_urls))


def verify_environment(
    plan: Plan,
    env: Environment,
    python: Path,
    backends: tuple[str, ...],
    builder: HostProfile | None = None,
    cache: Path | None = None,
) -> list[Check]:
    expect = expectation(plan, env, backends, builder)
    facts = collect_facts(python, backends, natives=wants_cuda(expect))
    llama = plan.backend("llama-cpp-python")
    toolkit = llama.build.cuda_toolkit if llama and llama.build else None
    add_static_gpu_facts(expect, facts, cuobjdump_for(toolkit, cache or cache_root()))
    return evaluate(expect, facts)


def verify_env(ctx: RunContext, env: Environment, loc: EnvLocation) -> None:
    records = ctx.record.backends
    env_record = ctx.record.envs[env.name]
    installed = tuple(b for b in env.backends if records.get(b) and records[b].status == "installed")
    env_record.packages = ctx.state(loc).frozen()
    if not installed:
        return
    env_record.verify_checks = checks_fingerprint()
    if _reuse_verify(ctx, env, installed):
        ctx.reporter.say(f"[{env.name}] nothing changed since the last verified install")
        return
    env_record.verified_at = now()
    for check in verify_environment(ctx.plan, env, loc.python, installed, ctx.opts.builder, ctx.cache):
        target = [check.backend] if check.backend in installed else list(installed)
        for b in target:
            records[b].verify.append(check.as_dict())
    bad = [f"{b}: {c['name']}: {c['detail']}" for b in installed for c in records[b].verify if not c["ok"]]
    for line in bad:
        ctx.reporter.say(f"[{env.name}] verify FAILED {line}")
    deferred = sorted(
        {f"{c['backend']}: {c['name']}" for b in installed for c in records[b].verify if c.get("deferred")}
    )
    if deferred:
        ctx.reporter.say(
            f"[{env.name}] deferred to a GPU host (no NVIDIA driver here): {'; '.join(deferred)}"
        )


def _reuse_verify(ctx: RunContext, env: Environment, installed: tuple[str, ...]) -> bool:
    """Verify's findings depend only on what is installed: same packages, same passing results."""
    prev = ctx.record.previous
    env_record = ctx.record.envs[env.name]
    old_env = prev.environment(env.name) if prev else None
    if prev is None or old_env is None or old_env.packages != env_record.packages:
        return False
    if old_env.verify_checks != checks_fingerprint():
        return False
    old = {b: prev.backend(b) for b in installed}
    passed = {
        b: r
        for b, r in old.items()
        if r and r.status == "installed" and r.verify and all(c["ok"] for c in r.verify)
    }
    if len(passed) != len(old):
        return False
    for b, r in passed.items():
        ctx.record.backends[b].verify = [dict(c) for c in r.verify]
    env_record.notes = list(old_env.notes)
    env_record.verified_at = old_env.verified_at
    return True
