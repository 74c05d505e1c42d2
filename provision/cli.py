"""The xinfer-setup command line.

Each subcommand lives in provision/commands/<name>.py, listed in provision/commands/registry.py;
a package above the product registers its own through an entry point, so provision/ never names
it. A command module is imported only when it runs, so `xinfer-setup probe` does not pay for the
planner, the installer or click's help of every command. Errors a user can act on are one line
on stderr, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from provision import __version__
from provision.commands import registry
from provision.errors import OperationFailed, UserError


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(registry.all_commands())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        spec = registry.lookup(name)
        if spec is None:
            return None
        return getattr(importlib.import_module(spec.module), spec.attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text comes from the table so `--help` imports no command module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, spec.help) for name, spec in registry.all_commands().items()])


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
