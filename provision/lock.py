"""One writer per environment root: `with root_lock(root, wait=True, say=print): ...`.

install, bundle and fleet take it before they change anything under a root. The lock is an
flock(2) on ROOT/.xinfer-setup.lock, so the kernel drops it the moment its holder dies, even by
SIGKILL: a lock left by a killed process is simply free, and the next run takes it over (and says
so, from the pid the dead holder wrote into the file). A second run on the same root waits, with a
message naming the holder, or with wait=False fails at once (exit 1) naming the holder's pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from provision import paths
from provision.errors import OperationFailed

LOCK_NAME = ".xinfer-setup.lock"
# Locks this process holds (path -> depth): bundle or fleet holding a root may call install, which
# locks it again; a second flock on a new descriptor would wait for ourselves forever.
_HELD: dict[str, int] = {}


class RootBusy(OperationFailed):
    """Another xinfer-setup run holds the root, and we were told not to wait."""


@dataclass(frozen=True)
class Holder:
    pid: int | None
    command: str
    started: str

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid else "another process"
        return f"{who} ({self.command}, since {self.started})" if self.command else who


def lock_path(root: Path | None) -> Path:
    """ROOT/.xinfer-setup.lock; without --venv, one lock for the user's default environments."""
    return (Path(root) if root is not None else paths.state_dir()) / LOCK_NAME


def read_holder(path: Path) -> Holder | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return None
    if not isinstance(d, dict) or not d:
        return None
    pid = d.get("pid")
    return Holder(pid if isinstance(pid, int) else None, str(d.get("command", "")), str(d.get("started", "")))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (a zombie counts as dead: it holds nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if " Z " in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]:
            return False
    return True


def _command() -> str:
    """`xinfer-setup install` (the verb only: arguments may hold URLs with credentials)."""
    verb = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
    return f"xinfer-setup {verb}".strip()


@contextmanager
def root_lock(
    root: Path | None,
    wait: bool = True,
    say: Callable[[str], None] | None = None,
    poll_s: float = 0.5,
) -> Iterator[Path]:
    """Hold the root's lock for the block; yields the lock file's path."""
    import fcntl  # POSIX; the environments this tool makes live on Linux and macOS hosts

    path = lock_path(root)
    key = str(path.resolve())
    if _HELD.get(key):
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_holder(path)
                where = f"{path.parent} is in use by {holder.describe() if holder else 'another process'}"
                if not wait:
                    raise RootBusy(f"{where}; run again when it ends, or without --no-wait to wait") from None
                if not announced and say is not None:
                    say(f"{where}; waiting for it to finish")
                    announced = True
                # Polling, not a blocking flock: Ctrl-C stays prompt and the message comes first.
                time.sleep(poll_s)
        stale = read_holder(path)
        gone = stale is not None and (stale.pid is None or not pid_alive(stale.pid))
        if stale is not None and gone and stale.pid != os.getpid() and say is not None:
            say(f"taking over the lock of {path.parent} left by {stale.describe()}, no longer running")
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "command": _command(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
            ).encode(),
            0,
        )
        _HELD[key] = 1
        try:
            yield path
        finally:
            _HELD.pop(key, None)
            # Clear the holder before unlocking, so nobody reads a finished run as stale.
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
