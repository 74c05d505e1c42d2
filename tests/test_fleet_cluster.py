"""fleet on three real hosts: network namespaces on a bridge, each with its own sshd, driven by
real ansible-playbook from the controller (this process, in the root namespace).

In order: a host Python < 3.10 is bad input; install (one bundle for the plan, the llama.cpp
build of the controller's wheelhouse shipped to every host); `up --model tiny` answered through
the supervisor from here; a re-run changes nothing; status and drift; reachability failures name
the address; a host whose sshd is stopped is reported while the others finish; `down` leaves no
process but sshd in any namespace. The harness is torn down even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tests.support.fleet_harness import FleetHarness, old_python  # noqa: E402

pytest.importorskip("ansible", reason="the [fleet] extra (ansible-core) is installed by scripts/test.sh")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PHASES: dict[str, dict] = {}


def fleet(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "provision", "fleet", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env=dict(os.environ),
    )


def report_of(out: subprocess.CompletedProcess) -> dict:
    try:
        return json.loads(out.stdout)
    except ValueError:
        pytest.fail(f"no JSON report (exit {out.returncode}):\n{out.stderr[-3000:]}\n{out.stdout[-2000:]}")


def one_line(out: subprocess.CompletedProcess, code: int) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("xinfer-setup: ")]
    assert out.returncode == code and len(lines) == 1, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr
    return lines[0]


def statuses(report: dict) -> dict[str, str]:
    return {h["name"]: h["status"] for h in report["hosts"]}


@pytest.fixture(scope="module")
def harness(tmp_path_factory, provisioned_root):
    # provisioned_root: the session's real install has put this CPU's llama-cpp-python build in
    # the controller's wheelhouse, so the fleet ships it instead of building on a host.
    h = FleetHarness(tmp_path_factory.mktemp("fleet-hosts"))
    try:
        h.up(3)
        yield h
    finally:
        h.down()
        if PHASES:
            print("\nfleet phases (s): " + json.dumps(PHASES))


@pytest.fixture(scope="module")
def inv(harness, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fleet-controller")
    return {"inventory": harness.inventory(d / "hosts.ini"), "dir": d / "fleet"}


def args(inv: dict[str, Path], *more: str, inventory: Path | None = None) -> list[str]:
    return ["-i", str(inventory or inv["inventory"]), "--dir", str(inv["dir"]), "--json", *more]


def test_host_python_below_3_10_is_bad_input(harness, inv, tmp_path):
    from provision.install.executor import uv_bin

    found = old_python(uv_bin())
    if found is None:
        pytest.skip("no Python < 3.10 here: none on PATH or under pyenv, and `uv python install 3.9` failed")
    python, version = found
    text = (
        inv["inventory"]
        .read_text()
        .replace(
            f"{harness.hosts[2].name} ansible_host={harness.hosts[2].address}",
            f"{harness.hosts[2].name} ansible_host={harness.hosts[2].address} "
            f"ansible_python_interpreter={python}",
        )
    )
    old = tmp_path / "old.ini"
    old.write_text(text)
    out = fleet("probe", "-i", str(old), "--dir", str(tmp_path / "f"))
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    name = harness.hosts[2].name
    assert last.startswith(f"xinfer-setup: host {name}: Python {version} is older than 3.10"), last
    assert not any((h.root / "tool").exists() for h in harness.hosts), "bad input must change nothing"


def test_up_on_fresh_hosts_names_fleet_install(harness, inv):
    """`up` before `install` (as one runs `docker compose up`): one line naming the step, exit 2,
    nothing started or written on any host."""
    out = fleet("up", *args(inv))
    line = one_line(out, 2)
    assert "not installed on host1, host2, host3" in line and "tool/bin/python" in line, line
    assert f"run `xinfer-setup fleet install -i {inv['inventory']}` first" in line, line
    assert "from_json" not in out.stderr
    for h in harness.hosts:
        assert not (h.root / "run").exists() and not (h.root / "tool").exists()
        assert {c for _, c in h.processes()} == {"sshd"}


def test_install_then_up_tiny_answers_through_the_supervisor(harness, inv):
    out = fleet("install", *args(inv))
    rep = report_of(out)
    assert out.returncode == 0, out.stderr[-3000:]
    assert set(statuses(rep).values()) <= {"changed", "unchanged"}
    assert rep["plans"] == 1
    assert rep["builds"] == {"done": 0, "reused_from_controller": 1, "keys": 1, "hosts_served": 3}
    for h in harness.hosts:
        receipt = json.loads((inv["dir"] / "receipts" / f"{h.name}.json").read_text())
        assert any("from the bundle" in n for n in receipt["notes"])
        llama = next(b for b in receipt["backends"] if b["name"] == "llama-cpp-python")
        assert llama["status"] == "installed" and "/wheelhouse/" in (llama["source"] or "")
    PHASES["install"] = rep["phases"]

    out = fleet("up", *args(inv, "--model", "tiny"))
    rep = report_of(out)
    assert out.returncode == 0, out.stderr[-3000:]
    sup = harness.hosts[0]
    assert rep["supervisor"] == f"http://{sup.address}:9997"
    assert {h["name"]: h["role"] for h in rep["hosts"]} == {
        "host1": "supervisor",
        "host2": "worker",
        "host3": "worker",
    }
    assert all(h["status"] == "changed" and h["reason"] is None for h in rep["hosts"])
    assert rep["model"]["worker"] == "host2" and rep["model"]["uid"] and rep["model"]["answer"]
    assert sorted(rep["workers_registered"]) == sorted(h.address for h in harness.hosts[1:])
    PHASES["up"] = rep["phases"]

    key_file = Path(rep["api_key_file"])
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    key = key_file.read_text().strip()
    # From the controller, with the key from the file: the supervisor routes to the worker.
    import openai

    client = openai.OpenAI(base_url=f"{rep['supervisor']}/v1", api_key=key, max_retries=0, timeout=120)
    answer = client.chat.completions.create(
        model=rep["model"]["uid"], messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert answer.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{rep['supervisor']}/v1", api_key="wrong", max_retries=0).models.list()
    # The key and the admin password are in 0600 files only: not in any log, report or process argv.
    texts = [out.stdout, out.stderr]
    texts += [p.read_text(errors="replace") for p in (inv["dir"] / "ansible").glob("*") if p.is_file()]
    for h in harness.hosts:
        texts += [p.read_text(errors="replace") for p in (h.root / "logs").glob("*") if p.is_file()]
        for pid, _ in h.processes():
            with contextlib.suppress(OSError):
                texts.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
    password = json.loads((key_file.parent / "cluster.json").read_text())["password"]
    assert not any(key in t or password in t for t in texts)


def test_rerun_changes_nothing(harness, inv):
    started = time.monotonic()
    out = fleet("up", *args(inv, "--model", "tiny"))
    rep = report_of(out)
    assert out.returncode == 0, out.stderr[-3000:]
    assert set(statuses(rep).values()) == {"unchanged"}, rep["hosts"]
    assert rep["model"]["answer"]
    out = fleet("install", *args(inv))
    rep = report_of(out)
    assert out.returncode == 0, out.stderr[-3000:]
    assert set(statuses(rep).values()) == {"unchanged"}, rep["hosts"]
    PHASES["rerun"] = {"up+install": round(time.monotonic() - started, 1)}


def test_up_reads_roots_from_the_inventory_not_the_cache(harness, inv, tmp_path):
    """facts.json holds every host's root from the runs above; an inventory that moves host3's
    xinfer_root to an empty directory is read as it is: up refuses host3 there, naming the new root."""
    moved = tmp_path / "moved-root"
    old = inv["inventory"].read_text()
    text = old.replace(f"xinfer_root={harness.hosts[2].root}", f"xinfer_root={moved}")
    assert text != old
    new = tmp_path / "moved.ini"
    new.write_text(text)
    line = one_line(fleet("up", *args(inv, inventory=new)), 2)
    assert line.startswith("xinfer-setup: fleet up: not installed on host3 ") and str(moved) in line, line
    # status and down key their cache by the inventory's variables: host3's new root is gathered.
    rep = report_of(fleet("status", *args(inv, inventory=new)))
    facts = json.loads((inv["dir"] / "facts.json").read_text())
    assert facts["host3"]["root"] == str(moved) and facts["host1"]["root"] == str(harness.hosts[0].root)
    assert {h["name"]: h["status"] for h in rep["hosts"]}["host3"] == "failed"


def test_status_reports_daemons_models_and_drift(harness, inv, tmp_path):
    out = fleet("status", *args(inv))
    rep = report_of(out)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {h["name"]: h for h in rep["hosts"]}
    assert set(statuses(rep).values()) == {"ok"}, rep["hosts"]
    assert rows["host1"]["daemons"] == {"supervisor": True}
    assert rows["host2"]["worker_registered"] and rows["host2"]["models"]
    # host3's inventory now asks for a portable build: its plan changes, its receipt does not.
    changed = tmp_path / "portable.ini"
    changed.write_text(
        inv["inventory"]
        .read_text()
        .replace(
            f"host3 ansible_host={harness.hosts[2].address}",
            f"host3 ansible_host={harness.hosts[2].address} xinfer_portable=true",
        )
    )
    assert fleet("plan", *args(inv, inventory=changed)).returncode == 0
    drifted = fleet("status", *args(inv, inventory=changed))
    rep = report_of(drifted)
    rows = {h["name"]: h for h in rep["hosts"]}
    assert rows["host3"]["status"] == "drift" and "its receipt is for plan" in rows["host3"]["reason"]
    # Drift is a non-zero exit, as `xinfer-setup status` on one host: CI acts on it.
    assert drifted.returncode == 1 and not rep["ok"]
    assert "fleet status: 1 host(s) drifted: host3: its receipt is for plan" in drifted.stderr
    assert rows["host2"]["status"] == "ok"
    assert fleet("plan", *args(inv)).returncode == 0


def test_status_fails_on_a_worker_killed_behind_its_back(harness, inv):
    """host3's worker and its supervising daemon SIGKILLed (as the OOM killer would; host3 has no
    model, so the model the next tests chat with stays up): status says failed for host3 naming
    the worker, exit 1; `up` brings it back and status is ok again."""
    w3 = harness.hosts[2]
    marker = f"XINFER_FLEET_DAEMON={w3.root}:worker".encode()
    daemon_pid = int((w3.root / "run" / "worker.pid").read_text())
    killed = [daemon_pid]
    for pid, _ in w3.processes():
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                killed.append(pid)
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert len(killed) > 1, "the worker's server process carries the marker"
    time.sleep(1)
    out = fleet("status", *args(inv))
    rep = report_of(out)
    rows = {h["name"]: h for h in rep["hosts"]}
    assert out.returncode == 1 and not rep["ok"], rep["hosts"]
    assert rows["host3"]["status"] == "failed" and "worker is not running" in rows["host3"]["reason"]
    assert rows["host3"]["daemons"] == {"worker": False}
    assert (rows["host1"]["status"], rows["host2"]["status"]) == ("ok", "ok"), rep["hosts"]
    assert "fleet status: 1 host(s) failed: host3: worker is not running" in out.stderr
    out = fleet("up", *args(inv))
    assert out.returncode == 0, out.stderr[-3000:]
    assert statuses(report_of(out))["host3"] == "changed"
    out = fleet("status", *args(inv))
    assert out.returncode == 0 and set(statuses(report_of(out)).values()) == {"ok"}, out.stderr[-3000:]


def test_unreachable_host_is_reported_and_the_others_finish(harness, inv):
    gone = harness.hosts[2]
    harness.stop_sshd(gone)
    try:
        out = fleet("up", *args(inv, "--model", "tiny"))
        rep = report_of(out)
    finally:
        harness.start_sshd(gone)
    assert out.returncode == 1
    rows = {h["name"]: h for h in rep["hosts"]}
    assert rows["host3"]["status"] == "unreachable", rows["host3"]
    assert gone.address in rows["host3"]["reason"] or "ssh" in rows["host3"]["reason"].lower()
    assert rows["host1"]["status"] == "unchanged" and rows["host2"]["status"] == "unchanged"
    assert rep["model"]["answer"]
    assert "host3" in out.stderr.strip().splitlines()[-1]


def test_reachability_failures_name_the_address(harness, inv, tmp_path):
    """host2 cannot reach the supervisor (a blackhole route in its namespace); host3 advertises an
    address the supervisor has no route to (198.19.255.13, benchmarking range, on no interface)."""
    sup, w2, w3 = harness.hosts
    bad = tmp_path / "bad-address.ini"
    bad.write_text(
        inv["inventory"]
        .read_text()
        .replace(
            f"host3 ansible_host={w3.address}",
            f"host3 ansible_host={w3.address} xinfer_address=198.19.255.13",
        )
    )
    assert w2.exec("ip", "route", "add", "blackhole", f"{sup.address}/32").returncode == 0
    try:
        out = fleet("up", *args(inv, inventory=bad))
        rep = report_of(out)
    finally:
        w2.exec("ip", "route", "del", "blackhole", f"{sup.address}/32")
    assert out.returncode == 1
    rows = {h["name"]: h for h in rep["hosts"]}
    assert rows["host2"]["status"] == "failed"
    assert f"cannot reach supervisor-api at {sup.address}:9997" in rows["host2"]["reason"]
    assert rows["host3"]["status"] == "failed"
    assert "the supervisor host1 cannot reach host3 at 198.19.255.13:9998" in rows["host3"]["reason"]
    assert rows["host1"]["status"] == "unchanged"


def test_down_leaves_no_process_in_any_namespace(harness, inv):
    out = fleet("down", *args(inv))
    rep = report_of(out)
    assert out.returncode == 0, out.stderr[-3000:]
    assert set(statuses(rep).values()) == {"changed"}
    for h in harness.hosts:
        left = [(pid, comm) for pid, comm in h.processes() if comm != "sshd"]
        assert not left, f"{h.ns}: {left}"
    rep = report_of(fleet("down", *args(inv)))
    assert set(statuses(rep).values()) == {"unchanged"}
