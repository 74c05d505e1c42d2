"""What one probe source found, plus what it wants the user to know."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Found(Generic[T]):
    value: T
    notes: tuple[str, ...] = ()
