"""`plan --cache-key`: one line that changes exactly when what decides the install changes.

Hashed: the plan's decisions (request, torch choices, backends, environments, warnings), the
parts of the host profile an install itself reads (OS, arch, C library, Python minor, the CPU
ISA features a -march=native build depends on), every recipes/*.toml byte for byte, and the
tool version. Left out on purpose: what varies between identical CI runners without changing
a single installed file: kernel release, memory size, core count, CPU brand, non-ISA CPU
flags, Python's patch level, and the probe's notes.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Any

from provision import __version__
from provision.install.wheelhouse import isa_features
from provision.plan import Plan

KEY_VERSION = 1


def _recipes() -> dict[str, str]:
    root = resources.files("provision.recipes")
    return {
        p.name: p.read_text(encoding="utf-8")
        for p in sorted(root.iterdir(), key=lambda p: p.name)
        if p.name.endswith(".toml")
    }


def key_material(
    plan: Plan, recipes: dict[str, str] | None = None, version: str = __version__
) -> dict[str, Any]:
    d = plan.to_dict()
    p = plan.profile
    minor = p.python.minor
    return {
        "key_version": KEY_VERSION,
        "tool_version": version,
        "plan": {
            k: d[k]
            for k in ("schema_version", "request", "torch", "backends", "environments", "warning_codes")
        },
        "host": {
            "system": p.os.system,
            "arch": p.os.arch,
            "libc": p.os.libc,
            "python": f"{p.python.implementation}-{minor[0]}.{minor[1]}",
            "isa": list(isa_features(tuple(p.cpu.flags or ()))),
        },
        "recipes": _recipes() if recipes is None else recipes,
    }


def cache_key(plan: Plan, recipes: dict[str, str] | None = None, version: str = __version__) -> str:
    """`xinfer-setup-<64 hex>`: sha256 of key_material as canonical JSON."""
    blob = json.dumps(key_material(plan, recipes, version), sort_keys=True, separators=(",", ":"))
    return f"xinfer-setup-{hashlib.sha256(blob.encode()).hexdigest()}"
