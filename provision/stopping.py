"""SIGTERM gets Ctrl-C's clean stop: receipt checkpointed, uv and builds stopped, exit 143.

CI cancellation, systemd, `timeout` and Ansible send SIGTERM, and a script's background job
starts with SIGINT ignored (POSIX), so Ctrl-C's KeyboardInterrupt is not the only way a run is
stopped. While a command runs under `sigterm_as_interrupt()`, SIGTERM raises `Terminated`, a
KeyboardInterrupt: every path written for Ctrl-C (the step recorded "interrupted", the receipt
saved, background builds killed) runs unchanged, and the CLI maps it to 143 instead of 130.

A terminal's Ctrl-C reaches the whole foreground process group; SIGTERM usually reaches this
process alone. So the handler first passes SIGTERM on to every process below this one (uv,
the build's cmake, ninja and compilers), before the stack unwinds and uv is killed: a killed
uv would leave its compilers orphaned, still running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, what a shell reports for a process SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be."""


def _parents_linux() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            parents[int(entry.name)] = int(fields[1])
    return parents


def _parents_ps() -> dict[int, int]:
    out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True)
    parents = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            parents[int(parts[0])] = int(parts[1])
    return parents


def descendants(pid: int, parents: dict[int, int]) -> list[int]:
    """Every process below pid, parents before children. Pure: tested on a made-up table."""
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        if p in found or p == pid:
            continue
        found.append(p)
        todo += children.get(p, [])
    return found


def _signal_descendants(sig: int) -> None:
    try:
        parents = _parents_linux() if sys.platform.startswith("linux") else _parents_ps()
    except OSError:
        return
    for pid in descendants(os.getpid(), parents):
        with contextlib.suppress(OSError):  # ended meanwhile
            os.kill(pid, sig)


def _on_sigterm(signum: int, frame: Any) -> None:
    # One clean stop: a second SIGTERM must not cut the receipt's save short (SIGKILL still can).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _signal_descendants(signal.SIGTERM)
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises Terminated while the block runs (main thread only: signals go there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


F = TypeVar("F", bound=Callable[..., Any])


def stops_cleanly_on_sigterm(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with sigterm_as_interrupt():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
