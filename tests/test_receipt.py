"""Receipts: atomic, round-trip, and how smoke/serve find engines through them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from provision.errors import UserError
from provision.install.receipt import (
    RECEIPT_REL,
    BackendRecord,
    EnvRecord,
    Receipt,
    installed_backends,
    read_receipt,
    receipt_path,
    write_receipt,
)

ROOT = Path(__file__).resolve().parents[1]


def _receipt(root: Path) -> Receipt:
    main = root / "main"
    return Receipt(
        profile={"schema_version": 1},
        plan={"schema_version": 1},
        installer="uv",
        environments=[
            EnvRecord("main", str(main), str(main / "bin/python"), packages=["torch==2.13.0+cpu"]),
            EnvRecord("vllm", str(root / "vllm"), str(root / "vllm/bin/python")),
        ],
        backends=[
            BackendRecord(
                "xinference",
                "installed",
                "main",
                "4.1.0",
                verify=[{"backend": "xinference", "name": "import", "ok": True, "detail": "imports"}],
            ),
            BackendRecord(
                "llama-cpp-python",
                "failed",
                "main",
                "0.3.36",
                cmake_args=["-DLLAMA_CUBLAS=on"],
                reason="build failed",
            ),
            BackendRecord("vllm", "installed", "vllm", "0.33.0"),
            BackendRecord("sglang", "skipped", None, reason="no CUDA GPU"),
        ],
    )


def test_write_read_round_trip_and_locator(tmp_path):
    r = _receipt(tmp_path)
    path = write_receipt(r, tmp_path / "main")
    assert path == receipt_path(tmp_path) == tmp_path / "main" / RECEIPT_REL
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    again = read_receipt(path)
    assert again.backend("llama-cpp-python").cmake_args == ["-DLLAMA_CUBLAS=on"]
    assert json.loads(path.read_text())["ok"] is False
    found = installed_backends(tmp_path)
    assert set(found) == {"xinference", "vllm"}  # only status "installed"
    assert found["vllm"].python == tmp_path / "vllm/bin/python"
    assert found["xinference"].version == "4.1.0"


def test_bad_receipts_are_one_line_user_errors(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="cannot read receipt"):
        read_receipt(bad)
    bad.write_text(json.dumps({"schema_version": 9}))
    with pytest.raises(UserError, match="not an xinfer-setup receipt"):
        read_receipt(bad)
    with pytest.raises(UserError, match="no receipt at"):
        read_receipt(tmp_path / "missing.json")


def test_without_a_receipt_the_current_interpreter_is_probed(tmp_path):
    """A venv with a fake engine distribution (a real .dist-info) and no receipt."""
    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    info = site / "xllamacpp-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: xllamacpp\nVersion: 1.2.3\n")
    code = (
        f"import json, sys; sys.path.insert(0, {str(ROOT)!r});"
        "from provision.install.receipt import installed_backends;"
        "found = installed_backends();"
        "print(json.dumps({k: [v.version, v.environment, str(v.python)] for k, v in found.items()}))"
    )
    out = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True, text=True, check=True)
    found = json.loads(out.stdout)
    assert found["xllamacpp"][:2] == ["1.2.3", "main"]
    assert found["xllamacpp"][2].startswith(str(venv))
