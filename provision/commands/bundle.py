"""`xinfer-setup bundle -o DIR`: everything the plan installs, for its target, in one directory."""

from __future__ import annotations

import json
from pathlib import Path

import click

from provision.commands.plan import plan_from_flags


@click.command()
@click.option("-o", "--output", "out_dir", required=True, metavar="DIR", help="The bundle directory.")
@click.option("--auto", is_flag=True, help="Consider every backend for the target.")
@click.option(
    "--backend", "backends", multiple=True, metavar="NAME", help="Bundle this backend (repeatable)."
)
@click.option(
    "--profile", "profile_path", metavar="FILE", help="Bundle for this host profile, not this machine."
)
@click.option("--torch-index-url", metavar="BASE", help="Mirror of https://download.pytorch.org/whl.")
@click.option("--portable", is_flag=True, help="llama.cpp for any CPU of the arch, not -march=native.")
@click.option("--dry-run", is_flag=True, help="Resolve and add up sizes; download and write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bundle(out_dir, auto, backends, profile_path, torch_index_url, portable, dry_run, as_json):
    """Resolve, download and record what the plan installs, for an offline `install --from-bundle`."""
    the_plan = plan_from_flags(auto, backends, profile_path, torch_index_url, portable)
    from provision.bundle.make import make_bundle

    report = make_bundle(the_plan, Path(out_dir), this_machine=profile_path is None, dry_run=dry_run)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.render())
