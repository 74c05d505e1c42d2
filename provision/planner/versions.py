"""Small pure helpers for the dotted versions profiles carry (drivers, glibc, Python, nvcc)."""

from __future__ import annotations

import re


def vtuple(text: str | None) -> tuple[int, ...]:
    """'525.60.13' -> (525, 60, 13); '12.8' -> (12, 8); None or no digits -> ()."""
    if not text:
        return ()
    return tuple(int(p) for p in re.findall(r"\d+", text))


def at_least(have: str | tuple[int, ...] | None, need: str) -> bool:
    """have >= need, comparing numerically part by part (missing parts count as 0)."""
    h = vtuple(have) if not isinstance(have, tuple) else have
    n = vtuple(need)
    if not h:
        return False
    width = max(len(h), len(n))
    return h + (0,) * (width - len(h)) >= n + (0,) * (width - len(n))


def sm_label(sm: int) -> str:
    return f"sm_{sm}"
