"""What an install run records: each backend's and environment's record, the checkpoint written
before a step changes an environment, and the receipt saved at the end, merged into the root's ledger.

The steps fill the records in; this module alone turns them into the receipt on disk.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field
from pathlib import Path

from provision import __version__
from provision.errors import OperationFailed, UserError
from provision.install import state as state_mod
from provision.install.envs import EnvLocation
from provision.install.executor import InstallerKind
from provision.install.ledger import merge_receipts
from provision.install.progress import Reporter
from provision.install.receipt import (
    RECEIPT_REL,
    BackendRecord,
    EnvRecord,
    Receipt,
    backend_dist,
    read_receipt,
    write_receipt,
)
from provision.plan import BackendDecision, Plan
from provision.profile import HostProfile


@dataclass
class RunRecord:
    """The records one run updates as it goes, and the receipt they make."""

    plan: Plan
    installer: InstallerKind
    # The primary environment's prefix: the receipt lives under it.
    home: Path
    previous: Receipt | None
    backends: dict[str, BackendRecord]
    envs: dict[str, EnvRecord]
    notes: list[str] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)  # environments this run is done with
    # The host that installed for another machine's profile (`install --profile`), recorded as built_on.
    builder: HostProfile | None = None

    @classmethod
    def start(
        cls,
        plan: Plan,
        installer: InstallerKind,
        locations: dict[str, EnvLocation],
        home: Path,
        reporter: Reporter,
    ) -> RunRecord:
        """Every planned backend not attempted yet (or skipped, with the plan's reason); each environment
        where it lives; and the root's previous receipt, which the ledger and the no-op steps read."""
        backends = {
            b.name: BackendRecord(
                name=b.name,
                status="skipped" if b.action != "install" else "failed",
                environment=b.environment,
                version=b.version,
                packages=list(b.packages),
                cmake_args=list(b.build.cmake_args) if b.build else None,
                reason=b.reason if b.action != "install" else "not attempted",
            )
            for b in plan.backends
        }
        envs = {
            env.name: EnvRecord(env.name, str(locations[env.name].prefix), str(locations[env.name].python))
            for env in plan.environments
        }
        return cls(plan, installer, home, previous_receipt(home, reporter), backends, envs)

    def receipt(self) -> Receipt:
        return Receipt(
            profile=self.plan.profile.to_dict(),
            plan=self.plan.to_dict(),
            installer=self.installer,
            environments=list(self.envs.values()),
            backends=list(self.backends.values()),
            notes=self.notes,
            created_at=now(),
            tool_version=__version__,
            built_on=self.builder.to_dict() if self.builder else None,
        )

    def checkpoint(self, env_name: str) -> None:
        """Before a command changes an environment, a receipt that claims none of its planned backends:
        a run killed outright (SIGKILL, power) writes nothing more, and the receipt must not say
        installed about what the killed step may have half-removed. The final save restores the truth."""
        interim = []
        for rec in self.backends.values():
            if rec.environment == env_name and rec.status != "skipped":
                rec = dataclasses.replace(
                    rec,
                    status="failed",
                    reason="interrupted: a step on its environment had started",
                    verify=[],
                )
            elif rec.environment not in self.finished:
                rec = dataclasses.replace(rec, status="skipped")  # the ledger keeps its old record
            interim.append(rec)
        self.save(dataclasses.replace(self.receipt(), backends=interim))

    def save(self, receipt: Receipt | None = None) -> Path:
        """Write what this run did into the root's receipt, keeping every entry still on disk."""
        listings: dict[str, state_mod.EnvState | None] = {}

        def present(rec: BackendRecord, env: EnvRecord) -> bool:
            if env.python not in listings:
                python = Path(env.python)
                listings[env.python] = state_mod.read_state(python) if python.exists() else None
            listing = listings[env.python]
            return listing is not None and listing.get(backend_dist(rec.name, rec.packages)) is not None

        try:
            return write_receipt(merge_receipts(self.previous, receipt or self.receipt(), present), self.home)
        except OSError as e:
            # Written by rename: the previous receipt, if any, is still whole.
            raise OperationFailed(f"cannot write the receipt under {self.home}: {e.strerror or e}") from None

    def suspect(self, name: str) -> bool:
        """The backend's last install failed or did not verify: what it left may only look installed."""
        old = self.previous.backend(name) if self.previous else None
        if old is None:
            return False
        return (old.status == "failed" and old.reason not in (None, "not attempted")) or (
            old.status == "installed" and any(not c.get("ok") for c in old.verify)
        )


def previous_receipt(prefix: Path, reporter: Reporter) -> Receipt | None:
    path = prefix / RECEIPT_REL
    if not path.exists():
        return None
    try:
        return read_receipt(path)
    except UserError as e:
        # Truncated or not ours: nothing in it can be trusted; this run verifies afresh and rewrites it.
        reporter.say(f"ignoring the unreadable receipt ({e}); this run writes a new one")
        return None


def dist_name(backend: BackendDecision) -> str:
    return backend_dist(backend.name, backend.packages)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
