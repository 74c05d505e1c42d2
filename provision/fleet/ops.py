"""The fleet commands' work on the controller: each runs playbooks and folds the results into a
FleetReport. An unreachable or failing host is reported with its reason and the others go on."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provision.errors import OperationFailed, UserError
from provision.fleet.ansible import PlayRun, run_playbook
from provision.fleet.inventory import Fleet
from provision.fleet.report import FleetReport, HostRow
from provision.fleet.wheels import HostFacts, check_python, parse_facts, self_wheel, tool_wheels


@dataclass
class Ctx:
    fleet: Fleet
    dir: Path
    forks: int | None = None
    echo: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))

    def play(self, name: str, extra: dict, limit: list[str] | None = None) -> PlayRun:
        return run_playbook(name, self.fleet, self.dir, {"xf_dir": str(self.dir), **extra},
                            limit=limit, forks=self.forks, echo=self.echo)


def new_report(ctx: Ctx, command: str) -> FleetReport:
    return FleetReport(command, [HostRow(h.name, h.role, "skipped") for h in ctx.fleet.hosts])


def _live(report: FleetReport) -> list[str]:
    return [h.name for h in report.hosts if h.status not in ("failed", "unreachable")]


def apply_run(report: FleetReport, run: PlayRun) -> None:
    """A playbook's outcomes into the report: failures stick, a change marks the host changed."""
    for name, o in run.hosts.items():
        row = report.row(name)
        if o.state in ("failed", "unreachable"):
            report.fail(name, o.reason or o.state, o.state)  # type: ignore[arg-type]
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


def facts(ctx: Ctx, report: FleetReport) -> dict[str, HostFacts]:
    with timed(report, "facts"):
        run = ctx.play("facts", {})
    apply_run(report, run)
    found: dict[str, HostFacts] = {}
    for name, o in run.hosts.items():
        data = o.data.get("xinfer: facts")
        if o.ok and data:
            found[name] = HostFacts(python=data["python"], machine=data["machine"],
                                    libc=data.get("libc") or "", root=data["root"])
        elif o.ok:
            report.fail(name, "the facts step printed nothing readable")
    # Bad input: a host that cannot run xinfer-setup at all; nothing is changed anywhere.
    for name, f in found.items():
        check_python(name, f)
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
        name: {"root": f.root, "tool_tar": str(sets[f.target].tar), "tool_wheel": sets[f.target].wheel.name,
               "tool_id": sets[f.target].content_id}
        for name, f in host_facts.items()
    }
    with timed(report, "probe"):
        run = ctx.play("probe", {"xf_hosts": xf_hosts}, limit=list(host_facts))
    apply_run(report, run)
    for name in _live(report):
        path = ctx.dir / "profiles" / f"{name}.json"
        if name in host_facts and path.exists():
            report.row(name).details["profile"] = str(path)
    (ctx.dir / "facts.json").write_text(json.dumps({n: f.__dict__ for n, f in host_facts.items()}, indent=2))
    return {n: f for n, f in host_facts.items() if n in _live(report)}


def read_facts(ctx: Ctx) -> dict[str, HostFacts]:
    path = ctx.dir / "facts.json"
    if not path.exists():
        return {}
    return {n: HostFacts(**d) for n, d in json.loads(path.read_text()).items()}


__all__ = ["Ctx", "OperationFailed", "UserError", "new_report", "parse_facts", "probe"]
