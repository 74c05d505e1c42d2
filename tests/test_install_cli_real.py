"""The install CLI for real, on paths the API-level tests don't take: the pip executor, and
Ctrl-C in the middle of a step followed by a re-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision.install.receipt import read_receipt
from tests.support.cli import REPO, cli


def _receipt(root: Path):
    return read_receipt(root / "main" / "share" / "xinfer-setup" / "receipt.json")


@pytest.mark.slow
def test_pip_executor_installs_and_verifies(tmp_path):
    root = tmp_path / "envs"
    done = cli("install", "--backend", "xllamacpp", "--venv", str(root), "--installer", "pip", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["installer"] == "pip"
    receipt = _receipt(root)
    xl = receipt.backend("xllamacpp")
    assert xl.status == "installed" and xl.version == "2026.10.11549"
    python = root / "main" / "bin" / "python"
    # pip made this environment itself, so it has its own pip (uv's environments do not).
    assert subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0
    assert subprocess.run([python, "-c", "import xllamacpp"], capture_output=True).returncode == 0
    verified = cli("verify", "--venv", str(root), "--json")
    assert verified.returncode == 0, verified.stderr


def _default_sigint() -> None:
    # A non-interactive shell starts its background jobs with SIGINT ignored (POSIX), and pytest
    # and every child inherit that: the install would never see the Ctrl-C this test sends.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_install(root: Path, backends: list[str]) -> subprocess.Popen:
    argv = [sys.executable, "-m", "provision", "install", *backends, "--venv", str(root)]
    return subprocess.Popen(
        argv,
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        preexec_fn=_default_sigint,  # noqa: PLW1509 (only a signal disposition, before exec)
    )


def _stop_at(proc: subprocess.Popen, needle: str, stop) -> tuple[list[str], str]:
    seen = []
    deadline = time.monotonic() + 600
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            stop()
            break
        assert time.monotonic() < deadline, f"no '{needle}' in time"
    else:
        pytest.fail(f"install ended before '{needle}':\n" + "".join(seen))
    return seen, proc.communicate(timeout=120)[1]


def _claims_hold(root: Path) -> None:
    """What the receipt calls installed really imports, by the recipe's own import check."""
    from provision.install.verify import IMPORT_CHECKS

    python = root / "main" / "bin" / "python"
    for record in _receipt(root).backends:
        if record.status == "installed":
            check = IMPORT_CHECKS[record.name]
            assert subprocess.run([python, "-c", check], capture_output=True).returncode == 0, check


def _resumes(root: Path, backends: list[str]) -> None:
    again = cli("install", *backends, "--venv", str(root))
    assert again.returncode == 0, again.stderr
    statuses = {b.name: b.status for b in _receipt(root).backends}
    assert all(statuses[b] == "installed" for b in backends[1::2]), statuses
    assert cli("verify", "--venv", str(root)).returncode == 0


def _children_of(pid: int) -> list[int]:
    from provision.stopping import _parents_linux, descendants

    return descendants(pid, _parents_linux())


@pytest.mark.slow
def test_ctrl_c_mid_step_leaves_an_accurate_receipt_and_a_rerun_resumes(tmp_path):
    root = tmp_path / "envs"
    backends = ["--backend", "transformers", "--backend", "xllamacpp"]
    proc = _start_install(root, backends)
    # A terminal's Ctrl-C reaches the whole foreground process group: the installer and its uv.
    seen, rest = _stop_at(proc, "installing transformers", lambda: os.killpg(proc.pid, signal.SIGINT))
    assert proc.returncode == 130, "".join(seen) + rest
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1] == "xinfer-setup: interrupted"

    receipt = _receipt(root)  # written even though the run was interrupted
    transformers = receipt.backend("transformers")
    assert transformers.status == "failed" and transformers.reason == "interrupted"
    _claims_hold(root)
    _resumes(root, backends)


@pytest.mark.slow
def test_sigterm_mid_step_stops_as_ctrl_c_does_with_exit_143(tmp_path):
    """SIGTERM to the installer alone (as `timeout`, CI cancellation or Ansible send it): uv, which
    gets no signal of its own, is stopped too, the receipt says what happened, the re-run resumes."""
    root = tmp_path / "envs"
    backends = ["--backend", "transformers", "--backend", "xllamacpp"]
    proc = _start_install(root, backends)
    below: list[int] = []

    def stop() -> None:
        deadline = time.monotonic() + 30
        while not below and time.monotonic() < deadline:  # uv starts just after the line
            below.extend(_children_of(proc.pid))
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)

    seen, rest = _stop_at(proc, "installing transformers", stop)
    assert proc.returncode == 143, "".join(seen) + rest
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1] == "xinfer-setup: terminated"
    assert below, "no uv below the installer to stop"
    time.sleep(0.5)
    alive = [p for p in below if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
    assert not alive, f"left running after SIGTERM: {alive}"

    transformers = _receipt(root).backend("transformers")
    assert transformers.status == "failed" and transformers.reason == "interrupted"
    _claims_hold(root)
    _resumes(root, backends)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return "Z"


def test_descendants_walks_the_whole_tree_below_a_pid():
    from provision.stopping import descendants

    # pid -> parent: 10 is us; 11 (uv) runs 12 (cmake) which runs 13 and 14; 20 is someone else's.
    table = {10: 1, 11: 10, 12: 11, 13: 12, 14: 12, 20: 1, 21: 20}
    assert descendants(10, table) == [11, 12, 13, 14]
    assert descendants(13, table) == []
