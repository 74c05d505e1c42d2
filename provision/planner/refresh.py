"""scripts/refresh-recipes: re-derive recipes/backends.toml from the index, write it back, show the diff.

For each backend (or those named), the newest release on the index is read and every fact the
recipes hold is derived again (provision.planner.derive). Facts of a backend with no blocker
are written with their source and today's date, and its [meta.derived_at] date moves; a
backend with a blocker keeps every fact and is listed under "NEEDS A HUMAN". Exit 0: written
(or nothing to change); 1: at least one backend needs a human; 2: bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from provision.errors import OperationFailed, UserError
from provision.planner.derive import Derivation, derive_backend
from provision.planner.index_meta import PYPI_SIMPLE, IndexView
from provision.planner.recipe_write import Edit, apply_edits, unified_diff
from provision.planner.recipes import Recipes, recipes_from_dicts

RECIPE = "backends.toml"


@dataclass
class RefreshResult:
    derivations: list[Derivation]
    before: str
    after: str

    @property
    def blocked(self) -> list[Derivation]:
        return [d for d in self.derivations if d.blockers]

    def diff(self, path: str = f"recipes/{RECIPE}") -> str:
        return unified_diff(self.before, self.after, path)

    def report(self) -> str:
        lines: list[str] = []
        for d in self.derivations:
            if d.blockers:
                continue
            changed = d.changed
            lines.append(
                f"{d.backend} {d.version}: {len(changed)} fact(s) changed, "
                f"{len(d.facts) - len(changed)} re-derived unchanged"
            )
            lines += [f"  {f.key}: {f.old!r} -> {f.new!r}  [{f.source}]" for f in changed]
            if d.assumed:
                lines.append(f"  assumed (not in wheel metadata, kept as written): {', '.join(d.assumed)}")
        if self.blocked:
            lines.append("")
            lines.append("NEEDS A HUMAN (these backends' facts were left untouched):")
            for d in self.blocked:
                lines += [f"  {d.backend} {d.version}: {b}" for b in d.blockers]
        return "\n".join(lines)


def load_dir(folder: Path) -> tuple[dict[str, Any], Recipes]:
    """(backends.toml's tables, the typed recipes) of a recipes folder (not the installed package)."""

    def read(name: str) -> dict[str, Any]:
        try:
            table: dict[str, Any] = tomllib.loads((folder / name).read_text(encoding="utf-8"))
            return table
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UserError(f"{folder / name} cannot be read: {e}") from None

    tables = read(RECIPE)
    recipes = recipes_from_dicts(read("torch.toml"), tables, read("llama_cpp.toml"), read("resolve.toml"))
    return tables, recipes


def derive_all(view: IndexView, tables: dict[str, Any], only: Sequence[str] = ()) -> list[Derivation]:
    """Xinference first: transformers is the newest release that co-installs with it."""
    names = [n for n, t in tables.items() if isinstance(t, dict) and "dist" in t]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise UserError(f"unknown backend '{unknown[0]}' (choose from {', '.join(names)})")
    chosen = [n for n in names if not only or n in only]
    out: list[Derivation] = []
    xinference: str | None = None
    for name in sorted(chosen, key=lambda n: n != "xinference"):
        d = derive_backend(view, name, tables[name], xinference=xinference)
        if name == "xinference" and not d.blockers:
            xinference = d.version
        out.append(d)
    return out


def edits_for(derivations: list[Derivation], today: date, index_label: str) -> list[Edit]:
    edits: list[Edit] = []
    if any(not d.blockers for d in derivations):
        edits.append(Edit("meta", "index", index_label, ""))
    for d in derivations:
        if d.blockers:
            continue
        edits += [Edit(f.table, f.key, f.new, f"{f.source} ({today.isoformat()})") for f in d.changed]
        edits.append(Edit("meta.derived_at", d.backend, today, ""))
    return edits


def refresh(folder: Path, index_url: str, only: Sequence[str], today: date, uv: str) -> RefreshResult:
    tables, recipes = load_dir(folder)
    view = IndexView(index_url, uv, recipes)
    derivations = derive_all(view, tables, only)
    before = (folder / RECIPE).read_text(encoding="utf-8")
    after = apply_edits(before, edits_for(derivations, today, view.label))
    return RefreshResult(derivations, before, after)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="refresh-recipes", description=__doc__.splitlines()[0] if __doc__ else None
    )
    ap.add_argument("--index-url", default=PYPI_SIMPLE, help="simple index to read (default: PyPI)")
    ap.add_argument(
        "--recipes", default=str(Path(__file__).resolve().parents[2] / "recipes"), help="recipes folder"
    )
    ap.add_argument("--backend", action="append", default=[], help="only this backend (repeatable)")
    ap.add_argument("--dry-run", action="store_true", help="print the report and diff; write nothing")
    args = ap.parse_args(argv)
    from provision.planner.resolve import uv_binary
    from provision.redact import redact

    try:
        if not args.index_url.startswith(("http://", "https://", "file:")):
            raise UserError(f"--index-url {args.index_url!r} is not an http(s):// or file: URL")
        folder = Path(args.recipes)
        result = refresh(folder, args.index_url, args.backend, date.today(), uv_binary())
    except UserError as e:
        print(f"refresh-recipes: {redact(str(e))}", file=sys.stderr)
        return 2
    except OperationFailed as e:
        print(f"refresh-recipes: {redact(str(e))}", file=sys.stderr)
        return 1
    print(redact(result.report()))
    diff = result.diff()
    print("")
    print(redact(diff) if diff else "(no change to the recipes)")
    if diff and not args.dry_run:
        (folder / RECIPE).write_text(result.after, encoding="utf-8")
        print(f"written: {folder / RECIPE}")
    return 1 if result.blocked else 0
