"""The receipt as a ledger: every install run adds to what an environment root already records.

A receipt is the user's record of what a machine got, so no command may make it forget an entry
that is still on disk. Pure functions over receipts and plan dicts; the disk is consulted only
through the `present` callback that the caller gives (one listing per environment).

Rules:
- a backend this run attempted (installed or failed) replaces its old record;
- a backend this run skipped keeps its old record when it has one (a skip changes nothing on
  disk), else it is recorded as skipped;
- an old record this run did not touch stays only while `present` says it is still there;
- an environment this run installed into takes this run's record; the others keep theirs;
- the recorded plan is the union: its backends and environments are what the records say,
  so `install --from-receipt` replays everything that was installed, not only the last run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from provision.install.receipt import BackendRecord, EnvRecord, Receipt
from provision.requirements import requirement_name

# Is this recorded backend still installed in this recorded environment?
PresentCheck = Callable[[BackendRecord, EnvRecord], bool]


def merge_receipts(previous: Receipt | None, run: Receipt, present: PresentCheck) -> Receipt:
    if previous is None:
        return run
    attempted = {b.name for b in run.backends if b.status != "skipped"}
    touched_envs = {b.environment for b in run.backends if b.name in attempted and b.environment}
    run_envs = {e.name: e for e in run.environments}
    old_envs = {e.name: e for e in previous.environments}

    envs: dict[str, EnvRecord] = {}
    for name, env in old_envs.items():
        envs[name] = run_envs[name] if name in touched_envs and name in run_envs else env
    for name, env in run_envs.items():
        if name in touched_envs and name not in envs:
            envs[name] = env

    notes = list(run.notes)
    records: dict[str, BackendRecord] = {}
    for old in previous.backends:
        if old.name in attempted:
            continue
        old_env = envs.get(old.environment or "")
        if old.status == "installed" and (old_env is None or not present(old, old_env)):
            notes.append(f"{old.name}: recorded as installed in {old.environment}, no longer there; dropped")
            continue
        records[old.name] = old
    for new in run.backends:
        if new.name in attempted or new.name not in records:
            records[new.name] = new
    # Ledger order: what was recorded first stays first (it is also the install order on replay).
    order = [b.name for b in previous.backends] + [b.name for b in run.backends]
    backends = [records[n] for n in dict.fromkeys(order) if n in records]
    used_envs = {b.environment for b in backends if b.status != "skipped"}
    environments = [e for n, e in envs.items() if n in used_envs or n in touched_envs]

    return dataclasses.replace(
        run,
        backends=backends,
        environments=environments,
        plan=merge_plans(previous.plan, run.plan, backends),
        notes=list(dict.fromkeys(previous.notes + notes)),
    )


def merge_plans(old: dict[str, Any], new: dict[str, Any], records: list[BackendRecord]) -> dict[str, Any]:
    """The plan dict that explains `records`: each backend's decision from the run that recorded it."""
    decided: dict[str, dict[str, Any]] = {b["name"]: b for b in old.get("backends", [])}
    for b in new.get("backends", []):
        old_b = decided.get(b["name"])
        # A skip in this run does not replace the decision that installed what is on disk.
        if b.get("action") == "skip" and old_b is not None and old_b.get("action") == "install":
            continue
        decided[b["name"]] = b
    backends = [decided[r.name] for r in records if r.name in decided]

    old_envs = {e["name"]: e for e in old.get("environments", [])}
    new_envs = {e["name"]: e for e in new.get("environments", [])}
    environments = []
    for name in dict.fromkeys([*old_envs, *new_envs]):
        members = [b["name"] for b in backends if b.get("environment") == name and b.get("action") != "skip"]
        if not members:
            continue
        o, n = old_envs.get(name), new_envs.get(name)
        base = dict(n or o or {})
        if o and n:
            base["requirements"] = _union_requirements(o.get("requirements", []), n.get("requirements", []))
            base["torch"] = n.get("torch") or o.get("torch")
            base["python"] = n.get("python") or o.get("python")
        base["backends"] = members
        environments.append(base)

    request = dict(new.get("request") or {})
    request["backends"] = sorted(b["name"] for b in backends)
    torch = new.get("torch")
    return {**new, "request": request, "torch": torch, "backends": backends, "environments": environments}


def drop_backend(receipt: Receipt, name: str, env_gone: bool, env_after: EnvRecord | None) -> Receipt:
    """The receipt once `name` is uninstalled (and its environment removed when env_gone)."""
    rec = receipt.backend(name)
    env_name = rec.environment if rec else None
    backends = [b for b in receipt.backends if b.name != name]
    environments = [
        (env_after if env_after is not None and e.name == env_name else e)
        for e in receipt.environments
        if not (env_gone and e.name == env_name)
    ]
    plan = dict(receipt.plan)
    plan["backends"] = [b for b in plan.get("backends", []) if b["name"] != name]
    plan["environments"] = [
        {**e, "backends": [m for m in e.get("backends", []) if m != name]}
        for e in plan.get("environments", [])
        if not (env_gone and e["name"] == env_name)
    ]
    request = dict(plan.get("request") or {})
    if request.get("backends"):
        request["backends"] = [b for b in request["backends"] if b != name]
    plan["request"] = request
    return dataclasses.replace(receipt, backends=backends, environments=environments, plan=plan)


def _union_requirements(old: list[str], new: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for r in [*new, *old]:  # the newer requirement for a project wins
        seen.setdefault(requirement_name(r) or r, r)
    return list(seen.values())
