"""How old the recipes' facts are: recipes/backends.toml [meta], read against a given day.

Pure: the caller passes today's date, so the rule is tested on any day and a plan's own
decisions (make_plan) never depend on the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from provision.plan import PlanWarning


@dataclass(frozen=True)
class Freshness:
    oldest: date
    oldest_backends: tuple[str, ...]
    age_days: int
    stale_after_days: int
    index: str

    @property
    def stale(self) -> bool:
        return self.age_days > self.stale_after_days

    def line(self) -> str:
        state = "stale" if self.stale else "current"
        return (
            f"recipes: facts derived from {self.index} on {self.oldest.isoformat()} "
            f"({', '.join(self.oldest_backends)}), {self.age_days} days ago; {state} "
            f"(stale after {self.stale_after_days} days)"
        )

    def warning(self) -> PlanWarning | None:
        if not self.stale:
            return None
        return PlanWarning(
            "recipes-stale",
            f"the recipes' facts for {', '.join(self.oldest_backends)} are {self.age_days} days old "
            f"(more than {self.stale_after_days}): newer releases may exist; plan with --latest or "
            "--pin NAME==VERSION to "
            "resolve them live, or refresh the recipes (scripts/refresh-recipes)",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "derived_at": self.oldest.isoformat(),
            "backends": list(self.oldest_backends),
            "age_days": self.age_days,
            "stale_after_days": self.stale_after_days,
            "stale": self.stale,
            "index": self.index,
        }


def freshness(meta: Mapping[str, Any] | None, today: date) -> Freshness | None:
    """None when the recipes carry no dates (then nothing is claimed about their age)."""
    dates = {str(k): v for k, v in ((meta or {}).get("derived_at") or {}).items() if isinstance(v, date)}
    if not dates or meta is None or "stale_after_days" not in meta:
        return None
    oldest = min(dates.values())
    return Freshness(
        oldest=oldest,
        oldest_backends=tuple(k for k, v in dates.items() if v == oldest),
        age_days=(today - oldest).days,
        stale_after_days=int(meta["stale_after_days"]),
        index=str(meta.get("index", "the index")),
    )
