"""Layers point one way: probe -> planner -> install -> engines -> serve, with smoke above them
all. Read from the source (every import statement, and every dotted module name in a string, as a
lazy import_module would take), not from a list kept by hand."""

from __future__ import annotations

import ast
from pathlib import Path

from provision.commands import registry
from tests.support.cli import cli

PROVISION = Path(__file__).resolve().parents[1] / "provision"


def _imports(path: Path) -> set[str]:
    """The modules a file names: import statements, and strings that look like dotted module paths."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text.count(".") >= 1 and " " not in text and text.replace(".", "").replace("_", "").isalnum():
                names.add(text)
    return names


def _offenders(files, banned: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{path.relative_to(PROVISION.parent)}: {name}"
        for path in files
        for name in _imports(path)
        if any(name == b or name.startswith(b + ".") for b in banned)
    )


def test_the_product_never_names_the_smoke_test():
    assert _offenders(PROVISION.rglob("*.py"), ("smoke",)) == []


def test_the_planner_and_the_probe_read_nothing_of_the_installer():
    below = [*(PROVISION / "planner").rglob("*.py"), *(PROVISION / "probe").rglob("*.py")]
    assert _offenders(below, ("provision.install",)) == []


def test_smoke_registers_its_command_through_the_entry_point():
    spec = registry.registered()["smoke"]
    assert (spec.module, spec.attr) == ("smoke.command", "smoke")
    commands = list(registry.all_commands())
    assert commands.index("smoke") == commands.index("status") + 1  # where --help always listed it
    out = cli("--help")
    assert out.returncode == 0 and "smoke      Run a tiny local model" in out.stdout
    out = cli("smoke", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: xinfer-setup smoke")


def test_an_unknown_command_is_a_usage_error():
    out = cli("smoek")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["xinfer-setup: No such command 'smoek'."]
