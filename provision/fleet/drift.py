"""Drift (pure): a host whose install receipt no longer matches its plan, or whose installed
packages differ from its peers' (hosts with the same plan), or with no receipt at all."""

from __future__ import annotations

from collections import Counter
from typing import Any

from provision.plan import plan_from_dict


def _packages(receipt: dict[str, Any]) -> frozenset[str]:
    return frozenset(
        f"{e['name']}:{p}" for e in receipt.get("environments", []) for p in e.get("packages", [])
    )


def drift_reasons(plans: dict[str, dict[str, Any]], receipts: dict[str, dict[str, Any]]) -> dict[str, str]:
    from provision.fleet.planning import plan_id

    out: dict[str, str] = {}
    for host, expected in plans.items():
        receipt = receipts.get(host)
        if receipt is None:
            out[host] = "no install receipt: not installed (run `xinfer-setup fleet install`)"
            continue
        got = plan_id(plan_from_dict(receipt["plan"]))
        if got != expected.get("plan_id"):
            out[host] = (
                f"its receipt is for plan {got}, its plan is now {expected.get('plan_id')}: re-install"
            )
            continue
        failed = [b["name"] for b in receipt.get("backends", []) if b.get("status") == "failed"]
        if failed:
            out[host] = f"its receipt records failed backend(s): {', '.join(failed)}"
    groups: dict[str, list[str]] = {}
    for host, expected in plans.items():
        if host in receipts and host not in out:
            groups.setdefault(str(expected.get("plan_id")), []).append(host)
    for hosts in groups.values():
        if len(hosts) < 2:
            continue
        sets = {h: _packages(receipts[h]) for h in hosts}
        common, count = Counter(sets.values()).most_common(1)[0]
        if count == 1 and len(hosts) == 2:
            # Two hosts that differ: neither is "the odd one", both are reported.
            pass
        for h in hosts:
            if sets[h] == common and count > 1:
                continue
            peers = [p for p in hosts if p != h]
            ref = common if count > 1 else sets[peers[0]]
            extra = sorted(sets[h] - ref)[:3]
            missing = sorted(ref - sets[h])[:3]
            if not extra and not missing:
                continue
            diff = ", ".join([f"+{x}" for x in extra] + [f"-{x}" for x in missing])
            out[h] = f"differs from its peers with the same plan ({', '.join(peers[:5])}): {diff}"
    return out
