"""The fleet report: one row per host (name, role, status, reason), phases with their times,
and whatever the command adds (plans, builds, supervisor, model). Rendered for people, or JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "changed", "unchanged", "failed", "unreachable", "skipped", "drift"]


@dataclass
class HostRow:
    name: str
    role: str
    status: Status
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class FleetReport:
    command: str
    hosts: list[HostRow]
    phases: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # text blocks shown after the table

    @property
    def ok(self) -> bool:
        """No host failed, none unreachable, none drifted from its plan (as `status` exits 1 on drift)."""
        return not self.bad

    @property
    def bad(self) -> list[HostRow]:
        return [h for h in self.hosts if h.status in ("failed", "unreachable", "drift")]

    def row(self, name: str) -> HostRow:
        return next(h for h in self.hosts if h.name == name)

    def fail(self, name: str, reason: str, status: Status = "failed") -> None:
        row = self.row(name)
        if row.status not in ("failed", "unreachable"):
            row.status, row.reason = status, reason

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"command": self.command, **self.extra}
        d["hosts"] = [
            {"name": h.name, "role": h.role, "status": h.status, "reason": h.reason, **h.details}
            for h in self.hosts
        ]
        d["phases"] = self.phases
        d["ok"] = self.ok
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def render(self) -> str:
        width = max([len(h.name) for h in self.hosts] + [4])
        lines = [f"{'host':{width}}  {'role':17}  {'status':11}  reason"]
        for h in self.hosts:
            lines.append(f"{h.name:{width}}  {h.role:17}  {h.status:11}  {h.reason or ''}")
        if self.phases:
            lines.append("")
            lines.append("phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.phases.items()))
        for key, value in self.extra.items():
            if isinstance(value, (str, int, float)):
                lines.append(f"{key}: {value}")
            elif (
                isinstance(value, dict)
                and value
                and all(isinstance(v, (str, int, float, type(None))) for v in value.values())
            ):
                lines.append(f"{key}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
        for note in self.notes:
            lines += ["", note]
        return "\n".join(lines)
