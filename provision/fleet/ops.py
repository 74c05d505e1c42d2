"""The fleet commands' work on the controller: each runs playbooks and folds the results into a
FleetReport. An unreachable or failing host is reported with its reason and the others go on."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provision.errors import OperationFailed
from provision.fleet.ansible import PlayRun, run_playbook
from provision.fleet.inventory import Fleet, FleetHost
from provision.fleet.report import FleetReport, HostRow
from provision.fleet.wheels import HostFacts, check_python, self_wheel, tool_wheels


@dataclass
class Ctx:
    fleet: Fleet
    dir: Path
    forks: int | None = None
    echo: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))

    def play(self, name: str, extra: dict, limit: list[str] | None = None) -> PlayRun:
        return run_playbook(
            name,
            self.fleet,
            self.dir,
            {"xf_dir": str(self.dir), **extra},
            limit=limit,
            forks=self.forks,
            echo=self.echo,
        )


def new_report(ctx: Ctx, command: str) -> FleetReport:
    return FleetReport(command, [HostRow(h.name, h.role, "skipped") for h in ctx.fleet.hosts])


def _live(report: FleetReport) -> list[str]:
    return [h.name for h in report.hosts if h.status not in ("failed", "unreachable")]


def apply_run(report: FleetReport, run: PlayRun) -> None:
    """A playbook's outcomes into the report: failures stick, a change marks the host changed."""
    for name, o in run.hosts.items():
        row = report.row(name)
        if o.state in ("failed", "unreachable"):
            report.fail(name, o.reason or o.state, o.state)
        elif o.state == "changed" and row.status not in ("failed", "unreachable"):
            row.status = "changed"
        elif o.state == "ok" and row.status == "skipped":
            row.status = "unchanged"


def timed(report: FleetReport, phase: str):
    class _T:
        def __enter__(self):
            self.t = time.monotonic()

        def __exit__(self, *exc):
            report.phases[phase] = round(report.phases.get(phase, 0) + time.monotonic() - self.t, 1)

    return _T()


# ------------------------------------------------------------------ probe


def facts(ctx: Ctx, report: FleetReport, raw: dict[str, dict] | None = None) -> dict[str, HostFacts]:
    """Each reachable host's facts, gathered now (and cached, keyed by its inventory variables);
    `raw` gets everything the facts step printed (what of ours is installed there, too)."""
    with timed(report, "facts"):
        run = ctx.play("facts", {})
    apply_run(report, run)
    found: dict[str, HostFacts] = {}
    for name, o in run.hosts.items():
        data = o.data.get("xinfer: facts")
        if o.ok and data:
            found[name] = HostFacts(
                python=data["python"], machine=data["machine"], libc=data.get("libc") or "", root=data["root"]
            )
            if raw is not None:
                raw[name] = data
        elif o.ok:
            report.fail(name, "the facts step printed nothing readable")
    # Bad input: a host that cannot run xinfer-setup at all; nothing is changed anywhere.
    for name, f in found.items():
        check_python(name, f)
    write_facts(ctx, found)
    return found


def probe(ctx: Ctx, report: FleetReport) -> dict[str, HostFacts]:
    """Bootstrap xinfer-setup on every reachable host and gather its profile to <dir>/profiles/."""
    host_facts = facts(ctx, report)
    if not host_facts:
        return {}
    with timed(report, "tool wheels"):
        wheel = self_wheel(ctx.dir / "tool" / "self")
        sets = {}
        for f in host_facts.values():
            if f.target not in sets:
                sets[f.target] = tool_wheels(f, ctx.dir / "tool", wheel)
    (ctx.dir / "profiles").mkdir(parents=True, exist_ok=True)
    xf_hosts = {
        name: {
            "root": f.root,
            "tool_tar": str(sets[f.target].tar),
            "tool_wheel": sets[f.target].wheel.name,
            "tool_id": sets[f.target].content_id,
        }
        for name, f in host_facts.items()
    }
    with timed(report, "probe"):
        run = ctx.play("probe", {"xf_hosts": xf_hosts}, limit=list(host_facts))
    apply_run(report, run)
    for name in _live(report):
        path = ctx.dir / "profiles" / f"{name}.json"
        if name in host_facts and path.exists():
            report.row(name).details["profile"] = str(path)
    return {n: f for n, f in host_facts.items() if n in _live(report)}


def inventory_digest(host: FleetHost) -> str:
    """What a host's cached facts were gathered from: its variables in the inventory (xinfer_root,
    ansible_host, the interpreter...). Another inventory for the same names is another key."""
    text = json.dumps(host.vars, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_facts(ctx: Ctx, found: dict[str, HostFacts]) -> None:
    """facts.json: the hosts gathered now, beside earlier entries that are still valid."""
    entries = {**read_facts(ctx), **found}
    data = {n: {**f.__dict__, "inventory": inventory_digest(ctx.fleet.host(n))} for n, f in entries.items()}
    (ctx.dir / "facts.json").write_text(json.dumps(data, indent=2))


def read_facts(ctx: Ctx) -> dict[str, HostFacts]:
    """Cached facts of the inventory's hosts, only where they were gathered from the same
    variables as the inventory has now (a changed xinfer_root is gathered again)."""
    path = ctx.dir / "facts.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    names = {h.name: h for h in ctx.fleet.hosts}
    fields = set(HostFacts.__dataclass_fields__)
    return {
        n: HostFacts(**{k: v for k, v in d.items() if k in fields})
        for n, d in data.items()
        if n in names and isinstance(d, dict) and d.get("inventory") == inventory_digest(names[n])
    }


def host_roots(ctx: Ctx, report: FleetReport) -> dict[str, str]:
    """Each host's root: from the cache when every host has a valid entry, else gathered now."""
    known = read_facts(ctx)
    if all(h.name in known for h in ctx.fleet.hosts):
        return {n: f.root for n, f in known.items()}
    return {n: f.root for n, f in facts(ctx, report).items()}


# ------------------------------------------------------------------ plan


def plan_hosts_from_dir(ctx: Ctx, report: FleetReport, portable: bool, names: list[str] | None = None):
    """make_plan for every host with a profile in <dir>/profiles/ (same pure function as `plan`)."""
    from provision.fleet.planning import plan_hosts
    from provision.plan import PlanRequest
    from provision.planner import load_recipes
    from provision.profile import load_profile

    profiles, requests = {}, {}
    for h in ctx.fleet.hosts:
        if names is not None and h.name not in names:
            continue
        path = ctx.dir / "profiles" / f"{h.name}.json"
        if not path.exists():
            report.fail(h.name, f"no profile at {path}: run `xinfer-setup fleet probe` first")
            continue
        profiles[h.name] = load_profile(path)
        requests[h.name] = PlanRequest(backends=h.backends, portable_cpu=h.portable or portable)
    with timed(report, "plan"):
        host_plans = plan_hosts(profiles, requests, load_recipes())
    index = {}
    for hp in host_plans:
        index[hp.name] = {"plan_id": hp.plan_id, "build_key": hp.build_key}
        row = report.row(hp.name)
        row.details.update(plan_id=hp.plan_id, build_key=hp.build_key)
        if row.status == "skipped":
            row.status = "ok"
    (ctx.dir / "plans.json").write_text(json.dumps(index, indent=2))
    return host_plans


def plan_fleet(ctx: Ctx, portable: bool = False) -> FleetReport:
    from provision.fleet.planning import group_builds, group_plans, render_table

    report = new_report(ctx, "plan")
    host_plans = plan_hosts_from_dir(ctx, report, portable)
    groups = group_plans(host_plans)
    report.extra["plans"] = [{"plan_id": g.plan_id, "hosts": list(g.hosts)} for g in groups]
    report.extra["builds"] = {k: list(v) for k, v in group_builds(host_plans).items()}
    report.notes.append(render_table(host_plans, groups))
    return report


# ------------------------------------------------------------------ install


def install_fleet(ctx: Ctx, portable: bool = False) -> FleetReport:
    """probe (the tool and fresh profiles) -> plan -> one wheel set per plan group -> llama.cpp
    built once per key -> `xinfer-setup install` on every host in parallel -> receipts back."""
    from provision.fleet.bundles import GroupBundle, make_group_bundle
    from provision.fleet.planning import group_builds
    from provision.install.wheelhouse import cache_root

    report = new_report(ctx, "install")
    host_facts = probe(ctx, report)
    host_plans = plan_hosts_from_dir(ctx, report, portable, names=list(host_facts))
    by_name = {hp.name: hp for hp in host_plans}

    # (plan id, wheel target) -> its bundle, or why it could not be made
    bundles: dict[tuple[str, str], GroupBundle | OperationFailed] = {}
    with timed(report, "bundles"):
        for hp in host_plans:
            key = (hp.plan_id, host_facts[hp.name].target)
            if key in bundles:
                continue
            try:
                bundles[key] = make_group_bundle(
                    hp.plan, hp.plan_id, key[1], ctx.dir / "bundles", reporter=_Quiet(ctx.echo)
                )
            except OperationFailed as e:
                bundles[key] = e
    for hp in host_plans:
        b = bundles[(hp.plan_id, host_facts[hp.name].target)]
        if isinstance(b, OperationFailed):
            report.fail(hp.name, f"wheels for its plan: {b}")

    # Build once per key: from the controller's wheelhouse when it has the build, else on the
    # first host of the key, fetched back and pushed to the others.
    builds: dict[str, dict] = {}
    first_wave: list[str] = []
    for build_key, hosts in group_builds([hp for hp in host_plans if hp.name in _live(report)]).items():
        have, why = recorded_build(cache_root() / "wheelhouse" / build_key)
        if have is None:
            have, why_fetched = recorded_build(ctx.dir / "builds" / build_key)
            why = why or why_fetched
        if why:
            ctx.echo(f"[controller] llama-cpp-python {build_key}: not shipped: {why}")
        builds[build_key] = {
            "hosts": list(hosts),
            "source": "controller" if have else hosts[0],
            "wheel": str(have[0]) if have else None,
            "sha256": have[1] if have else None,
        }
        if not have:
            first_wave.append(hosts[0])

    def host_vars(name: str, fetch_build: bool) -> dict:
        hp = by_name[name]
        bundle = bundles[(hp.plan_id, host_facts[name].target)]
        assert isinstance(bundle, GroupBundle)  # a host whose bundle failed is not live
        build = builds.get(hp.build_key or "", {})
        return {
            "root": host_facts[name].root,
            "bundle_tar": str(bundle.tar),
            "bundle_id": bundle.content_id,
            "llama_key": hp.build_key or "",
            "llama_wheel": build.get("wheel") or "",
            # Checked on the host before anything is installed from the pushed wheel.
            "llama_sha256": build.get("sha256") or "",
            "fetch_build": fetch_build,
        }

    done_builds = 0
    if first_wave:
        with timed(report, "build wave"):
            run = ctx.play(
                "install", {"xf_hosts": {n: host_vars(n, True) for n in first_wave}}, limit=first_wave
            )
        apply_run(report, run)
        for build_key, wave in builds.items():
            if wave["wheel"] is None:
                fetched, why = recorded_build(ctx.dir / "builds" / build_key)
                if fetched is not None:
                    wave["wheel"], wave["sha256"] = str(fetched[0]), fetched[1]
                    done_builds += 1
                else:
                    for n in wave["hosts"][1:]:
                        report.fail(
                            n,
                            f"the llama-cpp-python build for key {build_key} failed on {wave['source']}"
                            + (f" ({why})" if why else ""),
                        )
    rest = [n for n in _live(report) if n in by_name and n not in first_wave]
    if rest:
        with timed(report, "install"):
            run = ctx.play("install", {"xf_hosts": {n: host_vars(n, False) for n in rest}}, limit=rest)
        apply_run(report, run)
    for name in by_name:
        row = report.row(name)
        receipt = ctx.dir / "receipts" / f"{name}.json"
        if receipt.exists():
            row.details["receipt"] = str(receipt)
    served = sum(len(b["hosts"]) for b in builds.values())
    report.extra["builds"] = {
        "done": done_builds,
        "reused_from_controller": sum(1 for b in builds.values() if b["source"] == "controller"),
        "keys": len(builds),
        "hosts_served": served,
    }
    report.extra["plans"] = len({hp.plan_id for hp in host_plans})
    return report


def recorded_build(d: Path) -> tuple[tuple[Path, str] | None, str | None]:
    """The llama-cpp-python wheel in a wheelhouse entry (the controller's, or one fetched back from
    the first host of its key) with the sha256 its build.json recorded, checked against its bytes
    now; else None and why (no wheel: None, None). Only a checked wheel is shipped, and its hash
    travels with it to each host, which checks it again before installing it."""
    from provision.install.wheelhouse import sha256_file

    wheels = sorted(d.glob("*.whl")) if d.is_dir() else []
    if not wheels:
        return None, None
    try:
        recorded = json.loads((d / "build.json").read_text()).get("sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if not recorded:
        return None, f"{wheels[0].name} in {d} has no sha256 recorded by its build (build.json)"
    actual = sha256_file(wheels[0])
    if actual != recorded:
        return None, (
            f"{wheels[0].name} in {d} does not match the sha256 recorded by its build "
            f"({recorded[:16]}…, now {actual[:16]}…)"
        )
    return (wheels[0], actual), None


class _Quiet:
    """A Reporter for make_bundle whose lines go to the fleet's progress stream."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo

    def say(self, line: str) -> None:
        self.echo(f"[controller] bundle: {line}")

    def tick(self, line: str) -> None:
        pass

    def done(self) -> None:
        pass


# ------------------------------------------------------------------ smoke


def smoke_fleet(ctx: Ctx) -> FleetReport:
    """`xinfer-setup smoke` on every installed host, in parallel; its JSON stays on the host
    (<root>/logs/smoke.json), the last lines of a failure come back as the reason."""
    report = new_report(ctx, "smoke")
    roots = host_roots(ctx, report)
    with timed(report, "smoke"):
        run = ctx.play("smoke", {"xf_hosts": {n: {"root": r} for n, r in roots.items()}}, limit=list(roots))
    apply_run(report, run)
    for name in roots:
        row = report.row(name)
        if row.status == "unchanged":
            row.status = "ok"
        row.details["report"] = f"{roots[name]}/logs/smoke.json"
    return report
