"""What a root's receipt records, what verify last said, and what changed on disk since.

Reads only: one package listing per environment, never an install.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from provision.install import state as state_mod
from provision.install.receipt import Receipt


@dataclass(frozen=True)
class Drift:
    added: tuple[str, ...] = ()  # name==version now there, not recorded
    removed: tuple[str, ...] = ()  # recorded, now gone
    changed: tuple[str, ...] = ()  # "name: recorded -> now"

    @property
    def any(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def package_drift(recorded: list[str], now: list[str]) -> Drift:
    """Compare two `name==version` lists (a receipt's and a fresh listing)."""

    def split(pins: list[str]) -> dict[str, str]:
        return dict(p.split("==", 1) for p in pins if "==" in p)

    old, new = split(recorded), split(now)
    return Drift(
        added=tuple(f"{n}=={new[n]}" for n in sorted(new.keys() - old.keys())),
        removed=tuple(f"{n}=={old[n]}" for n in sorted(old.keys() - new.keys())),
        changed=tuple(
            f"{n}: {old[n]} -> {new[n]}" for n in sorted(old.keys() & new.keys()) if old[n] != new[n]
        ),
    )


@dataclass
class EnvStatus:
    name: str
    prefix: str
    exists: bool
    backends: list[dict[str, Any]] = field(default_factory=list)
    verified_at: str | None = None
    verify_ok: bool | None = None
    drift: Drift = field(default_factory=Drift)
    # Checks verify could not run where it last ran ("backend: check"), and what each waits for.
    deferred: list[str] = field(default_factory=list)
    # Incompatibilities `pip check` reports that the installer chose (state.deliberate_gaps).
    known: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exists and self.verify_ok is not False and not self.drift.any

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drift"] = {k: list(v) for k, v in asdict(self.drift).items()}
        d["ok"] = self.ok
        return d


def receipt_status(receipt: Receipt) -> list[EnvStatus]:
    out = []
    for env in receipt.environments:
        python = Path(env.python)
        members = [b for b in receipt.backends if b.environment == env.name and b.status != "skipped"]
        checks = [c for b in members for c in b.verify]
        st = EnvStatus(
            name=env.name,
            prefix=env.prefix,
            exists=python.exists(),
            backends=[
                {
                    "name": b.name,
                    "status": b.status,
                    "version": b.version,
                    "verify_ok": all(c.get("ok") for c in b.verify) if b.verify else None,
                }
                for b in members
            ],
            verified_at=env.verified_at,
            verify_ok=all(c.get("ok") for c in checks) if checks else None,
            deferred=[
                f"{b.name}: {c['name']} (waits for {c['deferred']})"
                for b in members
                for c in b.verify
                if c.get("deferred")
            ],
        )
        if st.exists:
            current = state_mod.read_state(python)
            st.drift = package_drift(env.packages, current.frozen())
            st.known = [sentence for _, sentence in state_mod.deliberate_gaps(current, env.notes)]
        out.append(st)
    return out
