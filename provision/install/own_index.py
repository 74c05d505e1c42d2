"""Class 20: a backend planned from its own index (xllamacpp's GPU wheels) replaces a copy of the
same version that came from elsewhere (PyPI's CPU wheel, a user's `pip install xllamacpp`).

The installed version alone cannot tell them apart (xorbitsai/inference PR #5185): the CPU and
GPU wheels carry the same version number, so "already installed" would keep the CPU one. The
previous receipt's plan says which index the installed copy came from.
"""

from __future__ import annotations

from typing import Any

from provision.plan import BackendDecision


def must_reinstall_from_own_index(
    backend: BackendDecision, installed: bool, previous_plan: dict[str, Any] | None
) -> bool:
    """Whether an installed copy of a backend planned from its own index must be replaced. Pure."""
    if not backend.extra_index_urls or not installed:
        return False
    if not previous_plan:
        return True  # installed by someone else: its index is unknown
    prev = next((b for b in previous_plan.get("backends") or [] if b.get("name") == backend.name), None)
    if prev is None or prev.get("action") != "install":
        return True
    return tuple(prev.get("extra_index_urls") or ()) != tuple(backend.extra_index_urls)
