"""The no-op re-run: nothing to do when the last receipt already is this plan, verified, untouched.

All of these must hold, or the full run (listing, requirement walk, verify) happens:
- it was made by this version of the tool (with the installer asked for, if one is), on the same
  profile, and no receipt is being replayed;
- every backend this plan installs is recorded installed, verified with every check passing, under
  the very same decision (packages, flags, environment); every environment it uses has the same
  torch and already records each of its requirements (the receipt is a ledger: it may hold more);
- every environment that holds a planned backend is where the receipt says, has the same
  installed-set fingerprint (provision.install.fingerprint) and was verified by the same checks.
Kept free of the installer's heavy imports: this is the whole cost of a no-op `install`.
"""

from __future__ import annotations

import json
from pathlib import Path

from provision import __version__
from provision.install.envs import EnvLocation, locate
from provision.install.fingerprint import installed_fingerprint
from provision.install.receipt import RECEIPT_REL, Receipt, read_receipt
from provision.install.verify import checks_fingerprint
from provision.plan import PRIMARY_ENV, Plan

UNCHANGED_NOTE = "nothing changed since the last verified install (same plan, same installed packages)"


def why_not_unchanged(
    plan: Plan,
    previous: Receipt | None,
    locations: dict[str, EnvLocation],
    installer: str | None,
    replaying: bool,
) -> str | None:
    """None when the previous receipt stands as it is; otherwise the first reason it does not."""
    if previous is None:
        return "no previous receipt"
    if replaying:
        return "replaying a receipt"
    if previous.tool_version != __version__:
        return "another version of xinfer-setup made the last receipt"
    if installer is not None and previous.installer != installer:
        return f"the last install used {previous.installer}"
    why = _why_not_same_decisions(json.loads(json.dumps(plan.to_dict())), previous)
    if why:
        return why
    checks = checks_fingerprint()
    for env in plan.environments:
        if not any(b.environment == env.name for b in plan.installs):
            continue
        rec = previous.environment(env.name)
        loc = locations[env.name]
        if rec is None or Path(rec.prefix) != loc.prefix or rec.installed_fingerprint is None:
            return f"[{env.name}] not recorded"
        if rec.verify_checks != checks:
            return f"[{env.name}] verified by other checks"
        if installed_fingerprint(loc.prefix) != rec.installed_fingerprint:
            return f"[{env.name}] its installed packages changed"
    return None


def previous_receipt(prefix: Path) -> Receipt | None:
    try:
        return read_receipt(prefix / RECEIPT_REL) if (prefix / RECEIPT_REL).exists() else None
    except Exception:  # an unreadable old receipt only means installing and verifying again
        return None


def unchanged_receipt(
    plan: Plan, venv_root: Path | None, installer: str | None, replaying: bool = False
) -> Receipt | None:
    """The previous receipt when it stands as it is (nothing to install, nothing to verify), else None."""
    locations = locate(plan, venv_root)
    primary = locations.get(PRIMARY_ENV) or next(iter(locations.values()))
    previous = previous_receipt(primary.prefix)
    if why_not_unchanged(plan, previous, locations, installer, replaying) is None:
        return previous
    return None


def _why_not_same_decisions(plan: dict, previous: Receipt) -> str | None:
    if plan["profile"] != previous.profile:
        return "the machine's profile changed"
    recorded = {b["name"]: b for b in previous.plan.get("backends", [])}
    for b in plan["backends"]:
        if b["action"] != "install":
            continue
        rec = previous.backend(b["name"])
        if recorded.get(b["name"]) != b or rec is None:
            return f"{b['name']}: a new decision"
        if rec.status != "installed" or not rec.verify or not all(c.get("ok") for c in rec.verify):
            return f"{b['name']}: not installed and verified last time"
    envs = {e["name"]: e for e in previous.plan.get("environments", [])}
    for env in plan["environments"]:
        if not env["backends"]:
            continue
        old = envs.get(env["name"])
        if old is None or old.get("torch") != env["torch"]:
            return f"[{env['name']}] another torch"
        if not set(env["requirements"]) <= set(old.get("requirements") or ()):
            return f"[{env['name']}] new requirements"
    return None
