"""The fast paths of install: the fingerprinted no-op re-run, and the source build overlapped
with the other installs. Units on a scratch site-packages; the rest through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import cli

from provision.install.envs import locate
from provision.install.executor import uv_bin
from provision.install.fingerprint import installed_fingerprint, site_dirs
from provision.install.noop import UNCHANGED_NOTE, why_not_unchanged
from provision.install.receipt import read_receipt
from provision.plan import plan_from_dict


def _site(prefix: Path) -> Path:
    site = prefix / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    return site


def test_fingerprint_follows_install_markers_only(tmp_path):
    site = _site(tmp_path)
    assert site_dirs(tmp_path) == [site]
    (site / "numpy-2.3.0.dist-info").mkdir()
    (site / "numpy").mkdir()
    first = installed_fingerprint(tmp_path)
    assert first is not None and first == installed_fingerprint(tmp_path)
    # Running code writes caches and modules next to the markers: not an install.
    (site / "__pycache__").mkdir()
    (site / "numpy" / "extra.py").write_text("")
    assert installed_fingerprint(tmp_path) == first
    # An uninstall + reinstall of the same name (a new dist-info, a new mtime) is a change.
    (site / "numpy-2.3.0.dist-info").rmdir()
    (site / "numpy-2.3.0.dist-info").mkdir()
    os.utime(site / "numpy-2.3.0.dist-info", ns=(1, 1))
    assert installed_fingerprint(tmp_path) != first
    second = installed_fingerprint(tmp_path)
    (site / "_virtualenv.pth").write_text("")
    assert installed_fingerprint(tmp_path) != second
    assert installed_fingerprint(tmp_path / "nowhere") is None


def _backend_dist_info(site: Path, libs: list[str]) -> Path:
    """llama-cpp-python as its wheel lays it out: a RECORD naming its shared libraries."""
    info = site / "llama_cpp_python-0.3.36.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: 0.3.36\n")
    rows = [
        "llama_cpp/__init__.py,sha256=x,1",
        *(f"{lib},sha256=x,1" for lib in libs),
        f"{info.name}/RECORD,,",
    ]
    (info / "RECORD").write_text("\n".join(rows) + "\n")
    for rel in ["llama_cpp/__init__.py", *libs]:
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(b"\x7fELF")
    return info


def test_fingerprint_sees_a_backends_native_files(tmp_path):
    """Issue 19: deleting llama_cpp/lib touches no install marker; the no-op must see it anyway."""
    site = _site(tmp_path)
    libs = ["llama_cpp/lib/libllama.so", "llama_cpp/lib/libggml-cpu.so.0"]
    _backend_dist_info(site, libs)
    other = site / "numpy-2.3.0.dist-info"
    other.mkdir()
    (other / "RECORD").write_text("numpy/core/_multiarray_umath.so,sha256=x,1\n")
    (site / "numpy" / "core").mkdir(parents=True)
    (site / "numpy" / "core" / "_multiarray_umath.so").write_bytes(b"x")
    first = installed_fingerprint(tmp_path)
    # Not a backend: its libraries are not stat'ed on every no-op (that is verify's job).
    (site / "numpy" / "core" / "_multiarray_umath.so").unlink()
    assert installed_fingerprint(tmp_path) == first
    # A backend's library replaced (other size) or gone: another fingerprint.
    (site / libs[1]).write_bytes(b"\x7fELF and more")
    second = installed_fingerprint(tmp_path)
    assert second != first
    shutil.rmtree(site / "llama_cpp" / "lib")
    assert installed_fingerprint(tmp_path) not in (first, second)


def test_the_listing_calls_a_backend_with_missing_libraries_broken(tmp_path):
    """provision.install.state, in a real venv: the install removes what is broken and reinstalls it."""
    from provision.install.state import read_state

    venv = tmp_path / "venv"
    subprocess.run([uv_bin(), "venv", "-q", str(venv)], check=True, capture_output=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    info = _backend_dist_info(site, ["llama_cpp/lib/libllama.so"])
    python = venv / "bin" / "python"
    state = read_state(python)
    assert state.get("llama-cpp-python") is not None and state.broken == ()
    (site / "llama_cpp" / "lib" / "libllama.so").unlink()
    assert read_state(python).broken == (str(info),)


def _stderr_lines(done) -> list[str]:
    return done.stderr.strip().splitlines()


@pytest.mark.slow
def test_no_op_rerun_and_drift(provisioned_root, tmp_path):
    """provisioned_root: the session's install, which leaves this machine's llama-cpp-python wheel
    in the wheelhouse, so this root installs in seconds."""
    root = tmp_path / "envs"
    args = ("install", "--backend", "llama-cpp-python", "--backend", "xllamacpp", "--venv", str(root))
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    receipt_file = root / "main" / "share" / "xinfer-setup" / "receipt.json"
    before = receipt_file.stat().st_mtime_ns
    recorded = read_receipt(receipt_file).environment("main").installed_fingerprint
    assert recorded == installed_fingerprint(root / "main")

    again = cli(*args, "--json")
    assert again.returncode == 0, again.stderr
    assert f"xinfer-setup: {UNCHANGED_NOTE}" in _stderr_lines(again)
    assert json.loads(again.stdout)["ok"] is True
    assert receipt_file.stat().st_mtime_ns == before  # nothing to rewrite

    # Drift: a dependency removed behind our back. The fingerprint changes; the full run repairs it.
    python = root / "main" / "bin" / "python"
    out = subprocess.run(
        [uv_bin(), "pip", "uninstall", "--python", str(python), "diskcache"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    repaired = cli(*args)
    assert repaired.returncode == 0, repaired.stderr
    assert f"xinfer-setup: {UNCHANGED_NOTE}" not in _stderr_lines(repaired)
    assert subprocess.run([python, "-c", "import diskcache"]).returncode == 0
    assert read_receipt(receipt_file).environment("main").installed_fingerprint == installed_fingerprint(
        root / "main"
    )

    # A plan that asks for less, all of it recorded as installed and verified, is a no-op too;
    # a decision that differs from the recorded one (other CMake flags) is not.
    subset = cli("install", "--backend", "xllamacpp", "--venv", str(root))
    assert subset.returncode == 0 and f"xinfer-setup: {UNCHANGED_NOTE}" in _stderr_lines(subset)
    receipt = read_receipt(receipt_file)
    plan = plan_from_dict(receipt.plan)
    locations = locate(plan, root)
    assert why_not_unchanged(plan, receipt, locations, None, False) is None
    llama = plan.backend("llama-cpp-python")
    other = replace(llama, build=replace(llama.build, cmake_args=("-DGGML_NATIVE=OFF",)))
    changed = replace(plan, backends=tuple(other if b is llama else b for b in plan.backends))
    assert why_not_unchanged(changed, receipt, locations, None, False) == "llama-cpp-python: a new decision"
    assert why_not_unchanged(plan, receipt, locations, "pip", False) == "the last install used uv"
    assert why_not_unchanged(plan, receipt, locations, None, True) == "replaying a receipt"

    # A drift inside a package that touches no install marker: a backend's shared libraries
    # deleted. `verify` finds it, and the no-op sees it too (issue 19): the install repairs it.
    cli(*args)
    # Removed, not edited: uv hardlinks installed files to its cache, an in-place edit would reach it.
    lib = next((root / "main").glob("lib/python3*/site-packages/llama_cpp/lib"))
    shutil.rmtree(lib)
    verified = cli("verify", "--venv", str(root), "--json")
    assert verified.returncode == 1
    failed = [c for c in json.loads(verified.stdout)["checks"] if not c["ok"]]
    assert failed and all(c["backend"] == "llama-cpp-python" for c in failed), failed
    repaired = cli(*args)
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    assert f"xinfer-setup: {UNCHANGED_NOTE}" not in _stderr_lines(repaired)
    assert any(lib.glob("*.so*")), "llama_cpp/lib is still gone"
    assert cli("verify", "--venv", str(root)).returncode == 0
    assert f"xinfer-setup: {UNCHANGED_NOTE}" in _stderr_lines(cli(*args))


@pytest.mark.slow
def test_build_failure_in_the_background_reports_cleanly(tmp_path):
    # A compiler that is not there: CMake's configure step fails in seconds, in the background
    # build, while xllamacpp installs in the foreground.
    root = tmp_path / "envs"
    done = cli(
        "install",
        "--backend",
        "llama-cpp-python",
        "--backend",
        "xllamacpp",
        "--venv",
        str(root),
        env={"CMAKE_ARGS": "-DCMAKE_C_COMPILER=/nonexistent/cc"},
    )
    assert done.returncode == 1, done.stderr
    lines = _stderr_lines(done)
    assert "Traceback" not in done.stderr
    assert lines[-1].startswith("xinfer-setup: not everything planned is installed and verified: ")
    assert "llama-cpp-python failed" in lines[-1]
    text = "\n".join(lines)
    assert "llama-cpp-python: building in the background meanwhile" in text
    assert text.index("installing xllamacpp") < text.index("llama-cpp-python FAILED")
    receipt = read_receipt(root / "main" / "share" / "xinfer-setup" / "receipt.json")
    llama, xl = receipt.backend("llama-cpp-python"), receipt.backend("xllamacpp")
    assert llama.status == "failed" and "build failed" in llama.reason
    assert llama.log and "/nonexistent/cc" in Path(llama.log).read_text()
    assert xl.status == "installed" and all(c["ok"] for c in xl.verify)
    assert cli("verify", "--venv", str(root)).returncode == 1
