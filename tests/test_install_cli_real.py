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


@pytest.mark.slow
def test_ctrl_c_mid_step_leaves_an_accurate_receipt_and_a_rerun_resumes(tmp_path):
    root = tmp_path / "envs"
    backends = ["--backend", "transformers", "--backend", "xllamacpp"]
    argv = [sys.executable, "-m", "provision", "install", *backends, "--venv", str(root)]
    # A terminal's Ctrl-C reaches the whole foreground process group: the installer and its uv.
    proc = subprocess.Popen(
        argv, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True
    )
    seen = []
    deadline = time.monotonic() + 600
    for line in proc.stderr:
        seen.append(line)
        if "installing transformers" in line:
            os.killpg(proc.pid, signal.SIGINT)
            break
        assert time.monotonic() < deadline, "the transformers step never started"
    else:
        pytest.fail("install ended before the transformers step:\n" + "".join(seen))
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, "".join(seen) + rest
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1] == "xinfer-setup: interrupted"

    receipt = _receipt(root)  # written even though the run was interrupted
    transformers = receipt.backend("transformers")
    assert transformers.status == "failed" and transformers.reason == "interrupted"
    python = root / "main" / "bin" / "python"
    for record in receipt.backends:
        if record.status == "installed":  # what the receipt calls installed really is there
            module = record.name.replace("-", "_")
            assert subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0

    again = cli("install", "--backend", "transformers", "--backend", "xllamacpp", "--venv", str(root))
    assert again.returncode == 0, again.stderr
    statuses = {b.name: b.status for b in _receipt(root).backends}
    assert statuses["transformers"] == statuses["xllamacpp"] == "installed"
    assert cli("verify", "--venv", str(root)).returncode == 0
