"""Write re-derived facts back into a recipes TOML file, leaving every other byte as it was.

A line editor rather than a TOML round-trip library: the recipes' facts are one-line values
(strings, numbers, one-line arrays), and editing only their lines keeps every comment, the
order and the layout exactly, with no new dependency. A changed fact's trailing comment is
replaced by its source and date (the old comment described the old value). After editing,
the file is parsed again and compared with the original: anything but the intended keys
changed, or a value that does not read back, is an error and nothing is written.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from provision.errors import OperationFailed

_HEADER = re.compile(r"^\s*\[(?!\[)\s*([^\]]+?)\s*\]\s*(#.*)?$")
_ANY_HEADER = re.compile(r"^\s*\[")


@dataclass(frozen=True)
class Edit:
    table: str  # dotted: "vllm", "meta.derived_at"
    key: str
    value: Any
    comment: str  # without '#'; "" keeps no comment


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise OperationFailed(f"recipes: cannot write {v!r} as a one-line TOML value")


def _table_name(header: str) -> str:
    return ".".join(part.strip().strip('"') for part in header.split("."))


def _find(lines: list[str], table: str, key: str) -> tuple[int, int]:
    """(index of the key's line or -1, index where the table's section ends)."""
    start = next(
        (i for i, ln in enumerate(lines) if (m := _HEADER.match(ln)) and _table_name(m.group(1)) == table), -1
    )
    if start < 0:
        raise OperationFailed(f"recipes: no [{table}] table to write {key} into")
    end = next((i for i in range(start + 1, len(lines)) if _ANY_HEADER.match(lines[i])), len(lines))
    # Keep the section's trailing blank lines and comments (they belong to the next table).
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    pat = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
    at = next((i for i in range(start + 1, end) if pat.match(lines[i])), -1)
    return at, end


def apply_edits(text: str, edits: Iterable[Edit]) -> str:
    lines = text.splitlines(keepends=True)
    wanted: list[Edit] = list(edits)
    for e in wanted:
        at, end = _find(lines, e.table, e.key)
        key = e.key if re.fullmatch(r"[A-Za-z0-9_-]+", e.key) else json.dumps(e.key)
        new = f"{key} = {toml_value(e.value)}" + (f"  # {e.comment}" if e.comment else "") + "\n"
        if at < 0:
            lines.insert(end, new)
            continue
        old = lines[at]
        if old.count("[") > old.count("]") or old.count("{") > old.count("}"):
            raise OperationFailed(f"recipes: [{e.table}] {e.key} spans several lines: edit it by hand")
        lines[at] = re.match(r"^\s*", old).group(0) + new  # type: ignore[union-attr]
    out = "".join(lines)
    _check(text, out, wanted)
    return out


def _get(tree: dict[str, Any], dotted: str) -> dict[str, Any]:
    for part in dotted.split("."):
        tree = tree.get(part, {})
    return tree


def _check(before: str, after: str, edits: list[Edit]) -> None:
    try:
        old, new = tomllib.loads(before), tomllib.loads(after)
    except tomllib.TOMLDecodeError as e:
        raise OperationFailed(f"recipes: the edited file does not parse ({e}); nothing written") from None
    for ed in edits:
        got = _get(new, ed.table).get(ed.key)
        want = list(ed.value) if isinstance(ed.value, tuple) else ed.value
        if got != want:
            raise OperationFailed(f"recipes: [{ed.table}] {ed.key} reads back as {got!r}, not {want!r}")
        _get(old, ed.table)[ed.key] = want
        _get(new, ed.table)[ed.key] = want
    if old != new:
        raise OperationFailed("recipes: editing changed more than the derived facts; nothing written")


def unified_diff(before: str, after: str, path: str) -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), f"a/{path}", f"b/{path}"
        )
    )
