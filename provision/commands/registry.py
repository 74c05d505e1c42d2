"""The CLI's command table: the product's own subcommands, and those other packages register.

A package above the product adds a command the way Python tools take plugins: an entry
point in the group below, naming a CommandSpec in a module that is cheap to import (the smoke
test registers `smoke` so). The entry points are read only for a name that is not one of ours,
or for --help.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "xinfer_setup.commands"


@dataclass(frozen=True)
class CommandSpec:
    module: str  # imported only when the command runs
    attr: str  # the click command in it
    help: str  # the one line `xinfer-setup --help` shows, without importing the module
    # Where --help lists a registered command: after this one (None: at the end).
    after: str | None = None


BUILTIN: dict[str, CommandSpec] = {
    "probe": CommandSpec(
        "provision.commands.probe", "probe", "Profile this machine's hardware and software."
    ),
    "plan": CommandSpec("provision.commands.plan", "plan", "Decide what to install, and why."),
    "install": CommandSpec("provision.commands.install", "install", "Carry a plan out, with a receipt."),
    "verify": CommandSpec(
        "provision.commands.install", "verify", "Check what is installed against its receipt."
    ),
    "uninstall": CommandSpec(
        "provision.commands.uninstall", "uninstall", "Remove a backend; the receipt follows."
    ),
    "status": CommandSpec(
        "provision.commands.status", "status", "What is recorded, last verified, and changed since."
    ),
    "serve": CommandSpec("provision.commands.serve", "serve", "Serve a model with the best engine here."),
    "bundle": CommandSpec(
        "provision.commands.bundle", "bundle", "Download what a plan installs, for offline installs."
    ),
    "fleet": CommandSpec(
        "provision.commands.fleet", "fleet", "Provision hosts with Ansible; run Xinference on them."
    ),
}


def registered() -> dict[str, CommandSpec]:
    """The commands installed packages register under ENTRY_POINT_GROUP (ours win a name clash)."""
    found: dict[str, CommandSpec] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        spec = ep.load()
        if isinstance(spec, CommandSpec) and ep.name not in BUILTIN:
            found[ep.name] = spec
    return found


def lookup(name: str) -> CommandSpec | None:
    return BUILTIN.get(name) or registered().get(name)


def all_commands() -> dict[str, CommandSpec]:
    """Every command in --help order: ours, each registered one after the command it names."""
    table = dict(BUILTIN)
    for name, spec in registered().items():
        names = list(table)
        at = names.index(spec.after) + 1 if spec.after in table else len(names)
        table = {**dict(list(table.items())[:at]), name: spec, **dict(list(table.items())[at:])}
    return table
