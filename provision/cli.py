"""The xinfer-setup command line.

Each subcommand lives in provision/commands/<name>.py (smoke's in smoke/command.py: the
smoke test sits above the product and uses it, never the reverse) and is imported only when it
runs, so `xinfer-setup probe` does not pay for the planner, the installer or click's
help of every command. Errors a user can act on are one line on stderr, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from provision import __version__
from provision.errors import OperationFailed, UserError

# name -> (module, attribute, one-line help shown by `xinfer-setup --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "probe": ("provision.commands.probe", "probe", "Profile this machine's hardware and software."),
    "plan": ("provision.commands.plan", "plan", "Decide what to install, and why."),
    "install": ("provision.commands.install", "install", "Carry a plan out, with a receipt."),
    "verify": ("provision.commands.install", "verify", "Check what is installed against its receipt."),
    "uninstall": ("provision.commands.uninstall", "uninstall", "Remove a backend; the receipt follows."),
    "status": ("provision.commands.status", "status", "What is recorded, last verified, and changed since."),
    "smoke": ("smoke.command", "smoke", "Run a tiny local model on every installed engine."),
    "serve": ("provision.commands.serve", "serve", "Serve a model with the best engine here."),
    "bundle": ("provision.commands.bundle", "bundle", "Download what a plan installs, for offline installs."),
    "fleet": ("provision.commands.fleet", "fleet", "Provision hosts with Ansible; run Xinference on them."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text comes from the table so `--help` imports no command module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, _, help_) in COMMANDS.items()])


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="xinfer-setup")
def cli() -> None:
    """Probe, plan, install, smoke-test and serve an Xinference LLM stack."""


def _interrupted(cause: BaseException | None) -> None:
    from provision.stopping import EXIT_TERMINATED, Terminated

    # SIGTERM (provision/stopping.py) stops as Ctrl-C does; its exit code is the shell's 128 + 15.
    if isinstance(cause, Terminated):
        click.echo("xinfer-setup: terminated", err=True)
        sys.exit(EXIT_TERMINATED)
    click.echo("xinfer-setup: interrupted", err=True)
    sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    from provision.redact import RedactingStream

    # Every line any layer prints leaves through one redaction (URL passwords, API keys, tokens).
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
    try:
        cli.main(args=argv, prog_name="xinfer-setup", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort as e:
        # click turns Ctrl-C (KeyboardInterrupt) into Abort; we ask no questions, so that is all it is.
        _interrupted(e.__context__)
    except click.ClickException as e:
        # Usage errors: one line, exit 2 (click's own code for them).
        click.echo(f"xinfer-setup: {e.format_message()}", err=True)
        sys.exit(2)
    except UserError as e:
        click.echo(f"xinfer-setup: {e}", err=True)
        sys.exit(e.exit_code)
    except OperationFailed as e:
        click.echo(f"xinfer-setup: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        _interrupted(e)
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
