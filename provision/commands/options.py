"""Options several commands share, and each command's help from the CLI's one table.

An option spelled here reads the same, with the same name and value type, in every command
that takes it; a command adds only what its own use of the option changes (`what`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

TORCH_INDEX_ENV = "XINFER_SETUP_TORCH_INDEX_URL"


def command(name: str, details: str = "") -> Callable[[Callable[..., Any]], click.Command]:
    """A click command whose help starts with its line in the command table (written once, there,
    so `xinfer-setup --help` imports no command module), then `details`."""
    from provision.commands.registry import lookup

    spec = lookup(name)
    assert spec is not None, f"{name} is not in the command table"
    summary = spec.help
    text = f"{summary}\n\n{details}" if details else summary
    return click.command(name=name, help=text, short_help=summary)


def auto(target: str = "this machine") -> Callable[[F], F]:
    return click.option("--auto", is_flag=True, help=f"Consider every backend for {target}.")


def backend(what: str, required: bool = False, list_names: bool = True) -> Callable[[F], F]:
    from provision.backends import names

    listed = f": {', '.join(names())}" if list_names else ""
    return click.option(
        "--backend",
        "backends",
        multiple=True,
        required=required,
        metavar="NAME",
        help=f"{what} (repeatable){listed}.",
    )


def profile(what: str) -> Callable[[F], F]:
    return click.option("--profile", "profile_path", metavar="FILE", help=what)


def venv(what: str = "The root given to install --venv.") -> Callable[[F], F]:
    return click.option("--venv", "venv_root", metavar="ROOT", help=what)


def as_json(what: str) -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=what)


def dry_run(what: str) -> Callable[[F], F]:
    return click.option("--dry-run", is_flag=True, help=what)


def torch_index_url() -> Callable[[F], F]:
    return click.option(
        "--torch-index-url",
        metavar="BASE",
        help=f"Mirror of https://download.pytorch.org/whl (also ${TORCH_INDEX_ENV}).",
    )


def portable() -> Callable[[F], F]:
    return click.option(
        "--portable", is_flag=True, help="Build llama.cpp for any CPU of the arch, not -march=native."
    )


def pin() -> Callable[[F], F]:
    return click.option(
        "--pin",
        "pins",
        multiple=True,
        metavar="NAME==VERSION",
        help="Plan this release instead of the recipes' one, its facts resolved live from the index "
        "(repeatable).",
    )


def latest() -> Callable[[F], F]:
    return click.option(
        "--latest",
        is_flag=True,
        help="Plan the newest release of every backend planned, its facts resolved live from the index.",
    )
