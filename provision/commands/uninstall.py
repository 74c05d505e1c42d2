"""`xinfer-setup uninstall --backend X`: remove an engine and its record."""

from __future__ import annotations

from pathlib import Path

import click

from provision.backends import check_known
from provision.commands import options
from provision.errors import UserError


@options.command("uninstall", "Its environment goes too when it has one to itself.")
@options.backend("The backend to remove", required=True)
@options.venv()
def uninstall(backends: tuple[str, ...], venv_root: str | None) -> None:
    from provision import paths
    from provision.install.executor import Installer, choose_installer
    from provision.install.pipconfig import read_index_config
    from provision.install.receipt import primary_prefix, read_receipt, receipt_path
    from provision.install.uninstall import uninstall_backend
    from provision.lock import root_lock

    check_known(backends)
    root = Path(venv_root).expanduser() if venv_root else None
    path = receipt_path(root)
    if not path.exists():
        raise UserError(f"no receipt at {path}: nothing was installed under this root")
    installer = Installer(choose_installer(None), read_index_config())
    managed = root if root is not None else paths.env_root()

    def say(message: str) -> None:
        click.echo(f"xinfer-setup: {message}", err=True)

    # The same lock as install: the receipt is read, changed and written by one run at a time.
    with root_lock(root, wait=True, say=say):
        for name in backends:
            removal = uninstall_backend(read_receipt(path), name, installer, primary_prefix(root), managed)
            where = f"the environment {removal.prefix}" if removal.env_removed else removal.prefix
            say(f"removed {name} {removal.version or ''} from {where}".replace("  ", " "))
