"""API keys reach engine servers through a file only the user can read, never argv; what is
printed shows *** in their place."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from provision.engines.adapters import ENGINES_DIR

KEYED_LAUNCH = ENGINES_DIR / "keyed_launch.py"
KEY_FILE_ENV = "XINFER_SETUP_API_KEY_FILE"
MASK = "***"


def keyed_command(argv: list[str], flag: str) -> list[str]:
    """[python, -m mod | script, args...] -> the same run through keyed_launch.py, which adds
    `flag KEY` from the key file inside the process (flag: the adapter's api_key_flag)."""
    return [argv[0], str(KEYED_LAUNCH), flag, *argv[1:]]


def write_key_file(path: Path, key: str) -> Path:
    """0600 from its first byte; the launcher deletes it once read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key)
    return path


def shown(argv: list[str], flag: str | None) -> str:
    """The command as printed: where the launcher adds the key, `flag ***` stands for it."""
    return " ".join(argv) + (f" {flag} {MASK}" if flag else "")
