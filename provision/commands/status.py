"""`xinfer-setup status`: per environment, what is recorded, what verify last said, and drift."""

from __future__ import annotations

import json
from pathlib import Path

import click

from provision.commands import options
from provision.errors import OperationFailed, UserError


@options.command("status", "Per environment; installs nothing.")
@options.venv()
@options.as_json("Print the status as JSON.")
def status(venv_root: str | None, as_json: bool) -> None:
    from provision.install.receipt import read_receipt, receipt_path
    from provision.install.status import receipt_status

    path = receipt_path(Path(venv_root).expanduser() if venv_root else None)
    if not path.exists():
        raise UserError(f"no receipt at {path}: nothing was installed under this root")
    envs = receipt_status(read_receipt(path))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "receipt": str(path),
                    "ok": all(e.ok for e in envs),
                    "environments": [e.to_dict() for e in envs],
                },
                indent=2,
            )
        )
    else:
        for e in envs:
            verify = {None: "not verified", True: "verify ok", False: "verify FAILED"}[e.verify_ok]
            click.echo(
                f"{e.name}: {e.prefix}{'' if e.exists else ' (GONE)'}; {verify}"
                f"{f' at {e.verified_at}' if e.verified_at else ''}"
            )
            for b in e.backends:
                click.echo(f"  {b['status']:9} {b['name']} {b['version'] or ''}".rstrip())
            for d in e.deferred:
                click.echo(f"  deferred  {d}")
            for label, items in (
                ("added", e.drift.added),
                ("removed", e.drift.removed),
                ("changed", e.drift.changed),
            ):
                if items:
                    click.echo(f"  drift, {label}: {', '.join(items)}")
            for sentence in e.known:
                click.echo(f"  note: {sentence}")
    bad = [e for e in envs if not e.ok]
    if bad:
        what = []
        for e in bad:
            if not e.exists:
                what.append(f"{e.name}: the environment is gone")
            elif e.drift.any:
                n = len(e.drift.added) + len(e.drift.removed) + len(e.drift.changed)
                what.append(f"{e.name}: {n} package(s) changed since the receipt")
            else:
                what.append(f"{e.name}: the last verify failed")
        raise OperationFailed("status: " + "; ".join(what) + " (`xinfer-setup install` repairs)")
