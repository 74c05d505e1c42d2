"""The fault matrix, for real: each row a fault done to a real install on this machine, then what
`verify` says and whether `install` repairs it. One root (transformers with torch +cpu,
llama-cpp-python from the wheelhouse, xllamacpp) serves the rows in order; the disk-full row has
its own root on a small tmpfs. Nothing here is faked: uv, pip, the venvs, the kernel's flock,
tmpfs and the network namespace are the real ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision.install.receipt import read_receipt
from provision.lock import lock_path, read_holder
from tests.support.cli import REPO, cli
from tests.support.netns import loopback_only_netns, netns_available

pytestmark = pytest.mark.slow

BACKENDS = ("--backend", "transformers", "--backend", "llama-cpp-python", "--backend", "xllamacpp")


def _receipt(root: Path):
    return read_receipt(root / "main" / "share" / "xinfer-setup" / "receipt.json")


def _python(root: Path) -> Path:
    return root / "main" / "bin" / "python"


def _uv() -> str:
    from provision.install.executor import uv_bin

    return uv_bin() or "uv"


def _claims_hold(root: Path) -> None:
    """Whatever the receipt calls installed really imports in its environment."""
    for rec in _receipt(root).backends:
        if rec.status == "installed":
            module = {"llama-cpp-python": "llama_cpp"}.get(rec.name, rec.name)
            done = subprocess.run([_python(root), "-c", f"import {module}"], capture_output=True, text=True)
            assert done.returncode == 0, (
                f"the receipt says {rec.name} is installed, but: {done.stderr[-300:]}"
            )


def _one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("xinfer-setup: "), stderr[-2000:]
    return last


def _rewrite(path: Path, change) -> None:
    """Change an installed file as a new file: uv hardlinks installs to its cache, so writing in
    place would change the cache and every other environment linked to it."""
    tmp = path.with_name(path.name + ".drift")
    tmp.write_text(change(path.read_text()))
    os.replace(tmp, path)


def _install(root: Path, *extra: str, **kw) -> subprocess.CompletedProcess:
    return cli("install", *BACKENDS, "--venv", str(root), *extra, **kw)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "envs"
    done = _install(root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_drift_uninstalled_llama_cpp_python_is_named_and_repaired(root):
    out = subprocess.run(
        [_uv(), "pip", "uninstall", "--python", str(_python(root)), "llama-cpp-python"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    verified = cli("verify", "--venv", str(root))
    assert verified.returncode == 1
    assert "llama-cpp-python" in _one_line_error(verified.stderr)
    again = _install(root)
    assert again.returncode == 0, again.stderr[-2000:]
    assert cli("verify", "--venv", str(root)).returncode == 0


def test_drift_of_the_torch_build_is_named_and_repaired(root):
    """PyPI's torch (a multi-GB CUDA build) must not be pulled here, so the drift is made at the
    lowest honest layer: the installed torch's own metadata and version module say +cu126, as a
    `pip install torch` from another index would leave them."""
    site = next((root / "main" / "lib").glob("python3*/site-packages"))
    old_info = next(site.glob("torch-*.dist-info"))
    new_info = site / "torch-2.13.0+cu126.dist-info"
    # What another build's install leaves: its version in the metadata, the dist-info's name
    # (what uv reads) and the RECORD's paths; torch.version says what the library was built for.
    _rewrite(old_info / "METADATA", lambda t: re.sub(r"(?m)^Version: .*$", "Version: 2.13.0+cu126", t))
    _rewrite(old_info / "RECORD", lambda t: t.replace(old_info.name, new_info.name))
    old_info.rename(new_info)
    _rewrite(
        site / "torch" / "version.py",
        lambda t: re.sub(
            r"(?m)^cuda(: Optional\[str\])? = .*$",
            "cuda: Optional[str] = '12.6'",
            re.sub(r"__version__ = .*", "__version__ = '2.13.0+cu126'", t),
        ),
    )
    verified = cli("verify", "--venv", str(root), "--json")
    assert verified.returncode == 1
    failed = [c for c in json.loads(verified.stdout)["checks"] if not c["ok"]]
    assert any(c["name"] == "torch variant" and "cu126" in c["detail"] for c in failed), failed
    again = _install(root)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "torch==2.13.0+cpu" in _receipt(root).environment("main").packages
    assert cli("verify", "--venv", str(root)).returncode == 0


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_receipt_is_a_clear_error_and_install_rewrites_it(root, damage):
    path = root / "main" / "share" / "xinfer-setup" / "receipt.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2] if damage == "truncated" else "\x00\x01 not json at all")
    verified = cli("verify", "--venv", str(root))
    assert verified.returncode == 2
    assert "cannot read receipt" in _one_line_error(verified.stderr)
    again = _install(root)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "ignoring the unreadable receipt" in again.stderr
    assert _receipt(root).ok
    assert cli("verify", "--venv", str(root)).returncode == 0


def _start_install(root: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "provision", "install", *BACKENDS, "--venv", str(root), *extra]
    return subprocess.Popen(
        argv, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True
    )


def _wait_for(proc: subprocess.Popen, needle: str, timeout_s: float = 600) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            return seen
        assert time.monotonic() < deadline, f"no '{needle}' in time:\n" + "".join(seen)
    pytest.fail(f"install ended before '{needle}':\n" + "".join(seen))


def _remove(root: Path, dist: str) -> None:
    out = subprocess.run(
        [_uv(), "pip", "uninstall", "--python", str(_python(root)), dist], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def _kill_mid_run(root: Path) -> subprocess.Popen:
    """SIGKILL an install while it holds the root, with xllamacpp's install step under way.

    The line "installing xllamacpp" is read after the fact: on a loaded machine the run may have
    finished (receipt written, lock released) before this process reads it. A kill that lands
    after the release tests nothing, so it is detected (the lock no longer names the killed pid;
    a SIGKILL leaves the holder written) and the fault is done again."""
    for _attempt in range(4):
        _remove(root, "xllamacpp")
        proc = _start_install(root)
        _wait_for(proc, "installing xllamacpp")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        holder = read_holder(lock_path(root))
        if holder is not None and holder.pid == proc.pid:
            return proc
    pytest.fail("every SIGKILL landed after the install had released the root")


def test_sigkill_mid_step_then_the_rerun_repairs(root):
    killed = _kill_mid_run(root)
    # The checkpoint written before each step claims nothing installed on its environment.
    _claims_hold(root)
    again = _install(root)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"taking over the lock of {root} left by pid {killed.pid}" in again.stderr
    assert _receipt(root).ok
    assert cli("verify", "--venv", str(root)).returncode == 0


def test_two_installs_on_one_root_one_waits_both_end_valid(root):
    for dist in ("xllamacpp", "llama-cpp-python", "transformers"):
        _remove(root, dist)  # enough work that the first run holds the root for a while
    first = _start_install(root)
    _wait_for(first, "installing transformers")
    second = _start_install(root)
    busy = cli("install", *BACKENDS, "--venv", str(root), "--no-wait")
    assert busy.returncode == 1
    assert f"in use by pid {first.pid}" in _one_line_error(busy.stderr)
    first_rest = first.communicate(timeout=900)[1]
    second_err = second.communicate(timeout=900)[1]
    assert first.returncode == 0, first_rest[-2000:]
    assert second.returncode == 0, second_err[-2000:]
    assert f"in use by pid {first.pid}" in second_err and "waiting" in second_err
    assert _receipt(root).ok
    assert cli("verify", "--venv", str(root)).returncode == 0


@pytest.mark.skipif(netns_available() is not None, reason=str(netns_available()))
def test_index_unreachable_mid_install_is_one_line_and_nothing_false_is_recorded(root):
    """The environments exist and llama-cpp-python/transformers are in place; xllamacpp has to come
    from the index, which the loopback-only namespace cannot reach."""
    _remove(root, "xllamacpp")
    with loopback_only_netns() as ns:
        done = ns.run(
            [sys.executable, "-m", "provision", "install", *BACKENDS, "--venv", str(root)],
            cwd=REPO,
            timeout=900,
        )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "xllamacpp failed" in _one_line_error(done.stderr)
    receipt = _receipt(root)
    assert receipt.backend("xllamacpp").status == "failed"
    assert receipt.backend("llama-cpp-python").status == "installed"
    _claims_hold(root)
    again = _install(root)  # back on the network: repaired
    assert again.returncode == 0, again.stderr[-2000:]


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1200m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_mid_install_is_one_line_and_the_rest_stays_intact(small_tmpfs):
    root = small_tmpfs / "envs"
    first = cli("install", "--backend", "xllamacpp", "--venv", str(root))
    assert first.returncode == 0, first.stderr[-2000:]
    filler = small_tmpfs / "filler"

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "provision",
            "install",
            "--backend",
            "xllamacpp",
            "--backend",
            "llama-cpp-python",
            "--venv",
            str(root),
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    seen = _wait_for(proc, "installing llama-cpp-python")
    # The up-front estimate passed; now the disk fills while the step runs (leave ~1 MB).
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(50):  # the install writes too: grab what is free until ~1 MB is left
            free = os.statvfs(small_tmpfs)
            want = free.f_bavail * free.f_frsize - (1 << 20)
            if want <= 0:
                break
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, os.fstat(fd).st_size, want)
    finally:
        os.close(fd)
    rest = proc.communicate(timeout=600)[1]
    stderr = "".join(seen) + rest
    assert proc.returncode == 1, stderr[-2000:]
    last = _one_line_error(stderr)
    assert "No space left on device" in stderr or "space" in last, stderr[-2000:]
    receipt = _receipt(root)  # whole: the previous receipt or a new one, never half
    assert receipt.backend("xllamacpp").status == "installed"
    _claims_hold(root)
    verified = cli("verify", "--venv", str(root), "--json")
    failing = {c["backend"] for c in json.loads(verified.stdout)["checks"] if not c["ok"]}
    assert failing == {"llama-cpp-python"}, verified.stdout[-2000:]  # xllamacpp's env is intact
    filler.unlink()
    again = cli("install", "--backend", "xllamacpp", "--backend", "llama-cpp-python", "--venv", str(root))
    assert again.returncode == 0, again.stderr[-2000:]
    assert cli("verify", "--venv", str(root)).returncode == 0
