"""Is the cluster what the inventory asks for? Pure: from what each host's `hostctl status` said
of its daemons and which workers the supervisor lists, the reason each host is failed.

A role the inventory gives a host must be started and alive there; a live worker must be one
the supervisor lists (a worker that lost its supervisor serves nothing); the supervisor must
answer its API. Anything else is a failure, so `fleet status` exits 1 on it.
"""

from __future__ import annotations

from typing import Any

from provision.fleet.inventory import Fleet


def cluster_failures(
    fleet: Fleet,
    daemons: dict[str, dict[str, dict[str, Any]]],
    listed: set[str] | None,
    api_error: str | None = None,
    list_error: str | None = None,
) -> dict[str, str]:
    """daemons: host -> role -> {alive, state, ...}, for the hosts whose status step ran;
    listed: worker addresses the supervisor lists, None when it could not be asked;
    api_error: why the supervisor's API refused a login (it is then failed);
    list_error: why its worker list failed (Xinference 4.1.0 answers 500 while a registered
    worker is dead, naming that worker's address: the worker it names is failed)."""
    failures: dict[str, str] = {}
    for h in fleet.hosts:
        if h.name not in daemons:
            continue  # not reached: the status step's own failure is the reason
        roles = daemons[h.name]
        wanted = [r for r, yes in (("supervisor", h.is_supervisor), ("worker", h.is_worker)) if yes]
        reasons = []
        for role in wanted:
            d = roles.get(role)
            if d is None:
                reasons.append(f"{role} not started (`xinfer-setup fleet up` starts it)")
            elif not d.get("alive"):
                reasons.append(f"{role} is not running: {d.get('state') or 'dead'}")
        if h.is_supervisor and roles.get("supervisor", {}).get("alive") and api_error:
            reasons.append(f"the supervisor's API at {fleet.endpoint} does not answer: {api_error}")
        if h.is_worker and list_error and (f"'{h.address}'" in list_error or f"{h.address}:" in list_error):
            reasons.append(f"the supervisor fails to reach this worker: {list_error[:300]}")
        worker = roles.get("worker")
        if h.is_worker and worker and worker.get("alive") and listed is not None and h.address not in listed:
            reasons.append(
                f"worker is running but the supervisor at {fleet.endpoint} does not list {h.address}"
            )
        if reasons:
            failures[h.name] = "; ".join(reasons)
    return failures
