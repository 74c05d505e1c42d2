"""`xinfer-setup smoke`, registered with the CLI through the entry point group
xinfer_setup.commands (pyproject.toml): the product lists it without knowing smoke exists.
Cheap to import: smoke.command itself loads only when the command runs."""

from __future__ import annotations

from provision.commands.registry import CommandSpec

COMMAND = CommandSpec(
    "smoke.command", "smoke", "Run a tiny local model on every installed engine.", after="status"
)
