"""The per-root lock, with real processes: one holder, waiters told who, a killed holder's lock taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision.lock import RootBusy, lock_path, read_holder, root_lock

HOLD = """
import sys, time
from pathlib import Path
from provision.lock import root_lock
with root_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(root: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_no_wait_names_the_holder(tmp_path):
    proc = _holder(tmp_path, 60)
    try:
        with pytest.raises(RootBusy, match=rf"in use by pid {proc.pid} "), root_lock(tmp_path, wait=False):
            pass
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_waits_with_a_message_then_proceeds(tmp_path):
    proc = _holder(tmp_path, 1.5)
    said: list[str] = []
    started = time.monotonic()
    with root_lock(tmp_path, wait=True, say=said.append, poll_s=0.1):
        waited = time.monotonic() - started
        assert read_holder(lock_path(tmp_path)).pid == os.getpid()
    proc.wait()
    assert waited >= 1.0
    assert len(said) == 1 and f"pid {proc.pid}" in said[0] and "waiting" in said[0]
    assert read_holder(lock_path(tmp_path)) is None  # released cleanly: nothing stale left


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    proc = _holder(tmp_path, 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_holder(lock_path(tmp_path)).pid == proc.pid  # the dead holder's record is still there
    said: list[str] = []
    started = time.monotonic()
    with root_lock(tmp_path, wait=False, say=said.append):
        assert time.monotonic() - started < 1
    assert any(f"pid {proc.pid}" in s and "no longer running" in s for s in said)


def test_the_same_process_may_lock_a_root_it_holds(tmp_path):
    """bundle/fleet hold a root and call install, which locks it again: no self-deadlock."""
    with root_lock(tmp_path, wait=False), root_lock(tmp_path, wait=False):
        assert read_holder(lock_path(tmp_path)).pid == os.getpid()
    proc = _holder(tmp_path, 0)  # released: another process gets it at once
    proc.wait()
