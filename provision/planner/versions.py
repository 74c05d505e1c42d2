"""Small pure helpers for the dotted versions profiles carry (drivers, glibc, Python, nvcc).

The text around a version varies ("gcc 7.5.0", "rocm6.2", "590.48.01"): its first dotted run
of numbers is the version, compared by packaging's rules (missing parts count as 0).
"""

from __future__ import annotations

import re

from packaging.version import Version

_RELEASE = re.compile(r"\d+(?:\.\d+)*")


def version_in(text: str | None) -> Version | None:
    """The first dotted number in `text` as a Version: 'gcc 7.5.0' -> 7.5.0; None when there is none."""
    m = _RELEASE.search(text or "")
    return Version(m.group()) if m else None


def vtuple(text: str | None) -> tuple[int, ...]:
    """'525.60.13' -> (525, 60, 13); '12.8' -> (12, 8); None or no digits -> ()."""
    v = version_in(text)
    return v.release if v else ()


def at_least(have: str | tuple[int, ...] | None, need: str) -> bool:
    """have >= need (missing parts count as 0); False when `have` names no version."""
    h = version_in(".".join(map(str, have)) if isinstance(have, tuple) else have)
    n = version_in(need)
    if h is None:
        return False
    return n is None or h >= n


def sm_label(sm: int) -> str:
    return f"sm_{sm}"
