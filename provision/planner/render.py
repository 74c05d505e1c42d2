"""The plan as a table a person reads (the JSON form is Plan.to_json)."""

from __future__ import annotations

import textwrap

from provision.plan import Plan

_WIDTH = 100


def _wrap(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, _WIDTH, initial_indent=indent, subsequent_indent=indent) or [indent]


def render_plan(plan: Plan) -> str:
    p = plan.profile
    gpus = ", ".join(g.name for g in p.gpus) or "no GPU"
    driver = f", NVIDIA driver {p.nvidia.driver_version}" if p.nvidia else ""
    lines = [
        f"host: {p.os.system} {p.os.arch}, {p.os.libc or 'no glibc'}, "
        f"Python {p.python.version}; {gpus}{driver}"
    ]
    t = plan.torch
    spec = f" torch{t.version_spec}" if t.version_spec else ""
    lines.append(f"torch: {t.variant}{spec} from {t.index_url or 'the default index (PyPI)'}")
    lines += _wrap(t.reason, "    ")
    lines.append("")
    lines.append("backends:")
    for b in plan.backends:
        where = f" -> {b.environment}" if b.environment else ""
        lines.append(f"  {b.action:<8}{b.name}{where}  {' '.join(b.packages)}".rstrip())
        lines += _wrap(b.reason, "            ")
        if b.build is not None:
            lines.append(
                f"            CMAKE_ARGS: {' '.join(b.build.cmake_args) or '(none: default CPU build)'}"
            )
        for url in b.extra_index_urls:
            lines.append(f"            index: {url}")
    lines.append("")
    lines.append("environments:")
    for e in plan.environments:
        torch = f"torch {e.torch.variant}{e.torch.version_spec or ''}" if e.torch else "no torch"
        python = f", Python {e.python}" if e.python else ""
        lines.append(f"  {e.name}: {', '.join(e.backends) or '(nothing)'} ({torch}{python})")
        lines += _wrap(e.reason, "      ")
    if plan.warnings:
        lines.append("")
        lines.append("warnings:")
        for w in plan.warnings:
            lines += _wrap(f"- {w.message} [{w.code}]", "  ")
    return "\n".join(lines)
