"""What a smoke run found: one row per engine (or Xinference engine), and the agreements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from smoke.checks import Agreement


@dataclass
class EngineResult:
    backend: str
    status: Literal["pass", "fail", "skip"]
    reason: str
    python: str | None = None
    hardware: str | None = None
    load_s: float | None = None  # in-process model load
    engine_tokens_per_s: float | None = None  # in-process greedy decode
    ready_s: float | None = None  # server start to first good GET /v1/models (Xinference: + launch)
    ttft_s: float | None = None  # streamed chat request to its first content
    tokens_per_s: float | None = None  # non-streamed chat: completion tokens / request time
    rss_mb: float | None = None  # the server's resident memory once it answered (its process group)
    answer: str | None = None
    log_path: str | None = None
    log_tail: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class NotCompared:
    """An engine that served and answered but was not held to the reference token for token."""

    engine: str
    dtype: str  # what it computed in
    reason: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SmokeReport:
    model: dict
    results: list[EngineResult]
    agreement: list[Agreement] = field(default_factory=list)
    total_s: float = 0.0
    not_compared: list[NotCompared] = field(default_factory=list)

    @property
    def compared(self) -> list[str]:
        """The engines held to the float32 reference's greedy token ids, in report order."""
        return list(dict.fromkeys(a.left for a in self.agreement if a.right == "reference"))

    @property
    def ok(self) -> bool:
        engines_ok = all(r.status != "fail" for r in self.results)
        return engines_ok and all(a.status == "pass" for a in self.agreement)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "total_s": round(self.total_s, 3),
            "model": self.model,
            "engines": [r.to_dict() for r in self.results],
            "agreement": [a.to_dict() for a in self.agreement],
            "compared": self.compared,
            "not_compared": [n.to_dict() for n in self.not_compared],
        }
