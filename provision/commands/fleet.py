"""`xinfer-setup fleet`: probe, plan, install, smoke, up, status and down over an Ansible inventory.

Progress is a line per host and step on stderr; the report goes to stdout (--json: the whole
fleet report). Exit 0 when every host did its part, 1 when one failed or was unreachable,
2 for bad input (an inventory that does not parse, a missing or doubled supervisor, a host
Python < 3.10, ansible-core missing).
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from provision.errors import OperationFailed


def _common(f):
    @click.option("-i", "--inventory", required=True, metavar="FILE", help="Ansible inventory (INI or YAML).")
    @click.option(
        "--dir",
        "workdir",
        default=None,
        metavar="DIR",
        help="Controller-side directory for profiles, receipts, bundles, secrets "
        "[default: $XDG_STATE_HOME/xinfer-setup/fleet, i.e. ~/.local/state/xinfer-setup/fleet].",
    )
    @click.option("--forks", type=int, default=None, help="Hosts Ansible works on at once.")
    @click.option("--json", "as_json", is_flag=True, help="Print the fleet report as JSON.")
    @functools.wraps(f)
    def wrapper(inventory, workdir, forks, as_json, **kw):
        from provision.fleet.inventory import load_fleet
        from provision.fleet.ops import Ctx

        fleet = load_fleet(inventory)
        d = controller_dir(workdir)
        report = f(Ctx(fleet, d, forks), **kw)
        click.echo(report.to_json() if as_json else report.render())
        if not report.ok:
            failed = sum(h.status != "drift" for h in report.bad)
            drifted = len(report.bad) - failed
            what = ", ".join(
                f"{n} host(s) {word}" for n, word in ((failed, "failed"), (drifted, "drifted")) if n
            )
            repair = " (`xinfer-setup fleet install` repairs drift)" if drifted else ""
            raise OperationFailed(
                f"fleet {report.command}: {what}: "
                + "; ".join(f"{h.name}: {h.reason}" for h in report.bad)[:1500]
                + repair
            )

    return wrapper


def controller_dir(workdir: str | None) -> Path:
    """The controller directory: the user's state directory unless --dir names one. It holds the
    cluster's credentials (secrets/, 0700): a `.gitignore` of `*` keeps a --dir inside a
    checkout out of `git add -A`."""
    from provision.paths import state_dir

    d = Path(workdir).expanduser().absolute() if workdir else state_dir() / "fleet"
    d.mkdir(parents=True, exist_ok=True)
    ignore = d / ".gitignore"
    if not ignore.exists():
        ignore.write_text(
            "# xinfer-setup fleet: profiles, receipts, bundles and secrets; never committed\n*\n"
        )
    return d


@click.group()
def fleet() -> None:
    """Provision many hosts with Ansible and run an Xinference cluster on them."""


@fleet.command()
@_common
def probe(ctx):
    """Every host's profile, gathered to DIR/profiles/."""
    from provision.fleet.ops import new_report
    from provision.fleet.ops import probe as do_probe

    report = new_report(ctx, "probe")
    do_probe(ctx, report)
    return report


@fleet.command()
@_common
@click.option("--portable", is_flag=True, help="Build llama.cpp for any CPU of the arch on every host.")
def plan(ctx, portable):
    """One plan per host (from DIR/profiles/), grouped by identical plans; a table."""
    from provision.fleet.ops import plan_fleet

    return plan_fleet(ctx, portable=portable)


@fleet.command()
@_common
@click.option("--portable", is_flag=True, help="Build llama.cpp for any CPU of the arch on every host.")
def install(ctx, portable):
    """Every host in parallel, from wheels pushed by the controller; receipts gathered back."""
    from provision.fleet.ops import install_fleet

    return install_fleet(ctx, portable=portable)


@fleet.command()
@_common
def smoke(ctx):
    """`xinfer-setup smoke` on every host."""
    from provision.fleet.ops import smoke_fleet

    return smoke_fleet(ctx)


@fleet.command()
@_common
@click.option(
    "--model",
    type=click.Choice(["tiny"]),
    default=None,
    help="Launch this model on a worker through the supervisor and chat with it.",
)
def up(ctx, model):
    """Supervisor and workers (auth on, API key in a 0600 file here), then the model."""
    from provision.fleet.cluster import up_fleet

    return up_fleet(ctx, model=model)


@fleet.command()
@_common
def status(ctx):
    """Per host: plan, receipt drift, daemon alive, models."""
    from provision.fleet.cluster import status_fleet

    return status_fleet(ctx)


@fleet.command()
@_common
def down(ctx):
    """Stop the workers and the supervisor; nothing of theirs is left running."""
    from provision.fleet.cluster import down_fleet

    return down_fleet(ctx)
