"""Per-host plans on the controller, by the same pure make_plan, grouped (pure: no I/O).

Hosts whose plans make the same decisions (torch, backends, environments, reasons) form one
group: one bundle of wheels serves the whole group. Independently, hosts whose llama-cpp-python
wheelhouse key is the same (version + effective CMake args + CPU features for a -march=native
build, + arch) share one build. A profile seen before is not planned again: a rack of identical
machines costs one make_plan.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from provision.plan import Plan, PlanRequest
from provision.planner import Recipes, make_plan
from provision.profile import HostProfile


@dataclass(frozen=True)
class HostPlan:
    name: str
    plan: Plan
    plan_id: str
    build_key: str | None  # llama-cpp-python wheelhouse key; None when nothing is built


@dataclass(frozen=True)
class PlanGroup:
    plan_id: str
    hosts: tuple[str, ...]
    plan: Plan  # the first host's; every host of the group has the same decisions


def plan_id(plan: Plan) -> str:
    """Decisions only: the profile itself (and its notes) may differ between hosts of one group.
    The repr of the frozen decision dataclasses is exact and ~20x cheaper than to_dict()."""
    key = repr((plan.request, plan.torch, plan.backends, plan.environments))
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def build_key(plan: Plan) -> str | None:
    from provision.install.run import wheel_build_request

    for b in plan.installs:
        if b.build is not None:
            return wheel_build_request(plan, b).key
    return None


def plan_hosts(
    profiles: Mapping[str, HostProfile], requests: Mapping[str, PlanRequest], recipes: Recipes
) -> list[HostPlan]:
    memo: dict[str, tuple[Plan, str, str | None]] = {}
    out = []
    for name, profile in profiles.items():
        request = requests[name]
        memo_key = repr((profile, request))
        if memo_key not in memo:
            plan = make_plan(profile, request, recipes)
            memo[memo_key] = (plan, plan_id(plan), build_key(plan))
        plan, pid, key = memo[memo_key]
        out.append(HostPlan(name, plan, pid, key))
    return out


def group_plans(host_plans: list[HostPlan]) -> list[PlanGroup]:
    groups: dict[str, list[HostPlan]] = {}
    for hp in host_plans:
        groups.setdefault(hp.plan_id, []).append(hp)
    return [PlanGroup(pid, tuple(h.name for h in hps), hps[0].plan) for pid, hps in groups.items()]


def group_builds(host_plans: list[HostPlan]) -> dict[str, tuple[str, ...]]:
    """{wheelhouse key: hosts needing that build}, in host order."""
    out: dict[str, list[str]] = {}
    for hp in host_plans:
        if hp.build_key:
            out.setdefault(hp.build_key, []).append(hp.name)
    return {k: tuple(v) for k, v in out.items()}


def summary(plan: Plan) -> str:
    """One line: torch variant and what is installed where."""
    installs = [f"{b.name}" + (f"@{b.environment}" if b.environment != "main" else "") for b in plan.installs]
    return f"torch {plan.torch.variant}; " + (", ".join(installs) or "nothing to install")


def render_table(host_plans: list[HostPlan], groups: list[PlanGroup], max_hosts_shown: int = 6) -> str:
    builds = group_builds(host_plans)
    lines = [
        f"{len(host_plans)} host(s), {len(groups)} distinct plan(s), {len(builds)} llama.cpp build(s)",
        "",
    ]
    lines.append(f"{'plan':12}  {'hosts':>5}  {'what':60}  hosts")
    for g in groups:
        shown = ", ".join(g.hosts[:max_hosts_shown]) + (
            f", ... (+{len(g.hosts) - max_hosts_shown})" if len(g.hosts) > max_hosts_shown else ""
        )
        lines.append(f"{g.plan_id:12}  {len(g.hosts):>5}  {summary(g.plan)[:60]:60}  {shown}")
    if builds:
        lines += ["", "llama-cpp-python builds (one per key, copied to the other hosts of the key):"]
        for key, hosts in builds.items():
            lines.append(f"  {key}: {len(hosts)} host(s)")
    return "\n".join(lines)
