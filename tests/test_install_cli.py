"""Bad input to `install` and `verify`: one line on stderr, exit 2, nothing changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "provision", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "say what to install"),
        (("--auto", "--backend", "vllm"), "contradict"),
        (("--backend", "tensorrt"), "unknown backend 'tensorrt'"),
        (("--auto", "--profile", "p.json"), "no such file: p.json"),
        (("--from-receipt", "r.json", "--auto"), "takes no --auto"),
        (("--from-receipt", "/nonexistent/receipt.json"), "no receipt at /nonexistent/receipt.json"),
        (("--auto", "--installer", "conda"), "Invalid value for '--installer'"),
        (("--from-receipt", "r.json", "--pin", "vllm==0.34.0"), "takes no --pin or --latest"),
        (("--from-bundle", "b", "--latest"), "it takes no --latest"),
        (("--backend", "vllm", "--pin", "vllm"), "write it as NAME==VERSION"),
    ],
)
def test_install_bad_input(args, message, tmp_path):
    out = _cli("install", *args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []


def test_malformed_receipt_is_refused(tmp_path):
    bad = tmp_path / "receipt.json"
    bad.write_text(json.dumps({"schema_version": 1, "plan": {}}))
    out = _cli("install", "--from-receipt", str(bad))
    assert out.returncode == 2
    assert "malformed receipt" in out.stderr and "Traceback" not in out.stderr


def test_verify_without_a_receipt(tmp_path):
    out = _cli("verify", "--venv", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"xinfer-setup: no receipt at {tmp_path}/main/share/xinfer-setup/receipt.json: "
        "run `xinfer-setup install` first (or pass --venv ROOT)"
    )
