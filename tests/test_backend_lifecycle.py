"""Adding, removing and checking backends on a real root: the receipt never disagrees with the disk.

One real `install --auto --venv ROOT` of this module's own (the session's shared root is left
alone, since this module removes engines from it), then the sequence a user would type.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from provision.install.executor import uv_bin
from provision.install.receipt import installed_backends, read_receipt, receipt_path
from tests.support.cli import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lifecycle") / "envs"
    done = cli("install", "--auto", "--venv", str(root), "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def _installed(root: Path) -> dict[str, str | None]:
    return {name: b.version for name, b in installed_backends(root).items()}


def _on_disk(root: Path, dist: str) -> bool:
    python = root / "main" / "bin" / "python"
    probe = (
        f"import importlib.metadata as m\ntry:\n m.version({dist!r}); print('yes')\n"
        "except m.PackageNotFoundError: print('no')"
    )
    return subprocess.run([str(python), "-c", probe], capture_output=True, text=True).stdout.strip() == "yes"


def test_explicit_backends_that_cannot_run_here_exit_1_and_erase_nothing(root):
    before = _installed(root)
    receipt_before = receipt_path(root).read_text()
    for backend, why in (("sglang", "sglang"), ("vllm", "vllm")):
        done = cli("install", "--backend", backend, "--venv", str(root))
        if done.returncode == 0:
            # A host where the engine installs (vLLM's CPU build): it joins, nothing else leaves.
            assert backend in _installed(root)
            continue
        assert done.returncode == 1, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith(f"xinfer-setup: {why}: "), last
        assert "Traceback" not in done.stderr
    after = _installed(root)
    assert {k: v for k, v in after.items() if k in before} == before
    if set(after) == set(before):
        assert receipt_path(root).read_text() == receipt_before


def test_uninstall_refuses_what_xinference_needs_and_unknown_backends(root):
    done = cli("uninstall", "--backend", "transformers", "--venv", str(root))
    assert done.returncode == 2
    assert "needed by xinference" in done.stderr and "Traceback" not in done.stderr
    assert _on_disk(root, "transformers")
    done = cli("uninstall", "--backend", "sglang", "--venv", str(root))
    assert done.returncode == 2 and "sglang is not installed under this root" in done.stderr
    done = cli("uninstall", "--backend", "llama-cpp-python", "--venv", str(root / "nowhere"))
    assert done.returncode == 2 and "no receipt at" in done.stderr


def test_uninstall_status_drift_and_install_brings_it_back(root):
    # Remove llama-cpp-python with the tool: gone from disk and from the receipt.
    done = cli("uninstall", "--backend", "llama-cpp-python", "--venv", str(root))
    assert done.returncode == 0, done.stderr
    assert not _on_disk(root, "llama-cpp-python")
    receipt = read_receipt(receipt_path(root))
    assert receipt.backend("llama-cpp-python") is None
    assert "llama-cpp-python" not in {b["name"] for b in receipt.plan["backends"]}

    # smoke runs what is left and skips llama-cpp-python with the reason.
    smoke = cli("smoke", "--venv", str(root), "--json")
    report = json.loads(smoke.stdout)
    rows = {r["backend"]: r for r in report["engines"]}
    assert rows["llama-cpp-python"]["status"] == "skip"
    assert "not installed" in rows["llama-cpp-python"]["reason"]
    assert rows["transformers"]["status"] == "pass" and rows["xllamacpp"]["status"] == "pass"

    # A change behind the tool's back: status names it, exit 1.
    main_python = str(root / "main" / "bin" / "python")
    uv = subprocess.run(
        [uv_bin() or "uv", "pip", "uninstall", "--python", main_python, "xllamacpp"],
        capture_output=True,
        text=True,
    )
    assert uv.returncode == 0, uv.stderr
    st = cli("status", "--venv", str(root), "--json")
    assert st.returncode == 1, st.stderr
    main = next(e for e in json.loads(st.stdout)["environments"] if e["name"] == "main")
    assert any(p.startswith("xllamacpp==") for p in main["drift"]["removed"])
    assert main["verified_at"]
    assert "main: 1 package(s) changed since the receipt" in st.stderr

    # install --auto reconciles: llama-cpp-python back from the wheelhouse in seconds, xllamacpp too.
    started = time.monotonic()
    done = cli("install", "--auto", "--venv", str(root), "--json")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    llama = next(b for b in json.loads(done.stdout)["backends"] if b["name"] == "llama-cpp-python")
    assert "/wheelhouse/" in llama["source"], llama["source"]
    assert llama["duration_s"] < 60, llama  # a source build takes minutes here
    print(f"install --auto after uninstall: {elapsed:.1f} s, llama-cpp-python step {llama['duration_s']} s")
    assert _on_disk(root, "llama-cpp-python") and _on_disk(root, "xllamacpp")
    st = cli("status", "--venv", str(root), "--json")
    assert st.returncode == 0, st.stdout[-2000:] + st.stderr
    assert json.loads(st.stdout)["ok"] is True
