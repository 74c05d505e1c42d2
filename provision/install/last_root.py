"""The root the last install used, so that a command run without --venv after `install --venv
ROOT` says that --venv is probably missing, naming ROOT, rather than only "not installed".

Remembering is best effort: a state directory that cannot be written costs this hint, never an
install.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from provision import paths
from provision.errors import NotInstalled
from provision.install.receipt import receipt_path


def remember(venv_root: Path | None, environ: Mapping[str, str] = os.environ) -> None:
    path = paths.last_root_file(environ)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(str(Path(venv_root).absolute()) if venv_root is not None else "")
        os.replace(tmp, path)
    except OSError:
        pass


def recall(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The last install's --venv ROOT while it still holds a receipt; None after one without --venv."""
    try:
        text = paths.last_root_file(environ).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    root = Path(text) if text else None
    return root if root is not None and receipt_path(root).exists() else None


def missing_venv_note(venv_root: Path | None, environ: Mapping[str, str] = os.environ) -> str:
    """Without --venv, when the last install went under a root: the note that says so; else ""."""
    last = recall(environ) if venv_root is None else None
    return f"--venv is probably missing: the last install was under --venv {last}" if last else ""


def noted(error: NotInstalled, venv_root: Path | None) -> NotInstalled:
    """The error, with the missing --venv named where that is the likely cause."""
    note = missing_venv_note(venv_root)
    return NotInstalled(f"{error}; {note}") if note else error
