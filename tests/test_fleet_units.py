"""fleet without hosts: inventory checks through the real ansible-inventory, bad input as one line
and exit 2, plan grouping and build keys over the recorded profiles, drift, event folding, and
`fleet plan` over 1,000 recorded-profile variations in under 5 s."""

from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision.errors import UserError
from provision.fleet.ansible import fold_events
from provision.fleet.drift import drift_reasons
from provision.fleet.inventory import fleet_from_json, load_fleet
from provision.fleet.planning import group_builds, group_plans, plan_hosts, plan_id
from provision.fleet.wheels import HostFacts, check_python, pip_platforms, uv_platform
from provision.plan import PlanRequest
from provision.planner import load_recipes
from provision.profile import load_profile, profile_from_dict

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "tests" / "profiles"

pytest.importorskip("ansible", reason="the [fleet] extra (ansible-core) is installed by scripts/test.sh")


def fleet_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "provision", "fleet", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def one_line_exit_2(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("xinfer-setup: "), out.stderr
    assert "Traceback" not in out.stderr
    return lines[0]


INI = """[supervisor]
s1 ansible_host=198.18.0.1
[workers]
w1 ansible_host=198.18.0.2 xinfer_worker_port=31000 xinfer_backends=xinference,xllamacpp
w2 ansible_host=198.18.0.3 xinfer_portable=true
"""


def test_inventory_ini_and_yaml_read_by_ansible(tmp_path):
    ini = tmp_path / "hosts.ini"
    ini.write_text(INI)
    fleet = load_fleet(ini)
    assert [h.name for h in fleet.hosts] == ["s1", "w1", "w2"]
    assert fleet.supervisor.name == "s1" and [w.name for w in fleet.workers] == ["w1", "w2"]
    assert fleet.endpoint == "http://198.18.0.1:9997"
    w1, w2 = fleet.host("w1"), fleet.host("w2")
    assert w1.worker_port == 31000 and w1.backends == ("xinference", "xllamacpp") and not w1.portable
    assert w2.worker_port == 9998 and w2.backends is None and w2.portable
    yml = tmp_path / "hosts.yml"
    yml.write_text(
        "all:\n  children:\n    supervisor:\n      hosts:\n        s1: {ansible_host: 198.18.0.1}\n"
        "    workers:\n      hosts:\n        s1: {}\n        w1: {ansible_host: 198.18.0.2}\n"
    )
    fleet = load_fleet(yml)
    assert fleet.host("s1").role == "supervisor+worker" and fleet.host("w1").role == "worker"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[supervisor\ns1 = = x\n", "does not parse"),
        ("[workers]\nw1 ansible_host=198.18.0.2\n", "no `supervisor` group"),
        (
            "[supervisor]\na ansible_host=198.18.0.1\nb ansible_host=198.18.0.4\n"
            "[workers]\nw ansible_host=198.18.0.2\n",
            "must hold one host, it holds 2 (a, b)",
        ),
        (
            "[supervisor]\ns ansible_host=127.0.0.1\n[workers]\nw ansible_host=198.18.0.2\n",
            "not reachable from other",
        ),
        (
            "[supervisor]\ns ansible_host=198.18.0.1\n"
            "[workers]\nw ansible_host=198.18.0.2 xinfer_backends=vllm,foo\n",
            "unknown backend 'foo'",
        ),
    ],
)
def test_bad_inventories_are_one_line_exit_2(tmp_path, text, message):
    inv = tmp_path / "hosts.ini"
    inv.write_text(text)
    line = one_line_exit_2(fleet_cli("plan", "-i", str(inv), "--dir", str(tmp_path / "f"), cwd=tmp_path))
    assert message in line, line


def test_missing_inventory_file(tmp_path):
    line = one_line_exit_2(fleet_cli("status", "-i", str(tmp_path / "nope.ini"), cwd=tmp_path))
    assert "does not exist" in line


def test_ansible_missing_names_the_extra(tmp_path):
    """A Python with xinfer-setup but without ansible-core beside it or on PATH."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    inv = tmp_path / "hosts.ini"
    inv.write_text(INI)
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "provision", "fleet", "plan", "-i", str(inv)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PATH": "/usr/bin:/bin"},
    )
    line = one_line_exit_2(out)
    assert "ansible-core" in line and "xinfer-setup[fleet]" in line, line


def test_python_below_3_10_is_bad_input():
    check_python("ok", HostFacts("3.10.0", "x86_64", "glibc 2.31", "/r"))
    with pytest.raises(UserError, match=r"host old: Python 3\.9\.18 is older than 3\.10"):
        check_python("old", HostFacts("3.9.18", "x86_64", "glibc 2.31", "/r"))


def test_target_tags_follow_the_hosts_glibc():
    f = HostFacts("3.11.2", "x86_64", "glibc 2.36", "/r")
    assert f.target == "cp311-x86_64-manylinux_2_36"
    assert uv_platform(f) == "x86_64-manylinux_2_36"
    assert uv_platform(HostFacts("3.12.1", "aarch64", "glibc 2.30", "/r")) == "aarch64-manylinux_2_28"
    tags = pip_platforms(HostFacts("3.10.0", "x86_64", "glibc 2.17", "/r"))
    assert tags[0] == "manylinux_2_17_x86_64" and "manylinux2014_x86_64" in tags
    assert "manylinux_2_28_x86_64" not in tags


def _profile(name: str):
    return load_profile(PROFILES / f"{name}.json")


def test_identical_hosts_share_a_plan_and_a_build():
    recipes = load_recipes()
    h100 = _profile("linux-h100-driver590")
    profiles = {
        "a": h100,
        "b": h100,
        "c": _profile("linux-l40s-driver580"),
        "d": _profile("linux-graviton3-cpu"),
    }
    hps = plan_hosts(profiles, {n: PlanRequest() for n in profiles}, recipes)
    groups = group_plans(hps)
    assert [g.hosts for g in groups] == [("a", "b"), ("c",), ("d",)]
    builds = group_builds(hps)
    assert len(builds) == 3 and ("a", "b") in builds.values()


def test_cpu_features_split_native_builds_and_portable_joins_them():
    recipes = load_recipes()
    base = json.loads((PROFILES / "linux-cpu-debian12-nvcc-no-cublas.json").read_text())
    other = copy.deepcopy(base)
    other["cpu"]["flags"] = [f for f in base["cpu"]["flags"] if not f.startswith("avx512")] or ["sse4_2"]
    if other["cpu"]["flags"] == base["cpu"]["flags"]:
        other["cpu"]["flags"] = base["cpu"]["flags"] + ["avx512f"]
    profiles = {"x": profile_from_dict(base), "y": profile_from_dict(other)}
    native = plan_hosts(profiles, {n: PlanRequest() for n in profiles}, recipes)
    assert len(group_plans(native)) == 1, "same decisions: one plan group"
    assert len(group_builds(native)) == 2, "-march=native: one build per CPU feature set"
    portable = plan_hosts(profiles, {n: PlanRequest(portable_cpu=True) for n in profiles}, recipes)
    assert len(group_builds(portable)) == 1, "--portable: one build serves both CPUs"


def test_fold_events_first_failure_wins_and_unreachable_is_named():
    events = [
        {"host": "a", "task": "xinfer: start worker", "status": "ok", "changed": True, "data": {"pid": 1}},
        {
            "host": "b",
            "task": "xinfer: reach supervisor",
            "status": "failed",
            "changed": False,
            "reason": "cannot reach supervisor-api at 198.18.0.1:9997 (timed out)",
        },
        {"host": "b", "task": "later", "status": "ok", "changed": True},
        {
            "host": "c",
            "task": "Gathering",
            "status": "unreachable",
            "reason": "ssh: connect to host 198.18.0.3",
        },
        {"host": "d", "task": "x", "status": "skipped"},
    ]
    out = fold_events(events, ["a", "b", "c", "d"])
    assert out["a"].state == "changed" and out["a"].data["xinfer: start worker"] == {"pid": 1}
    assert out["b"].state == "failed" and "198.18.0.1:9997" in out["b"].reason
    assert out["c"].state == "unreachable" and "198.18.0.3" in out["c"].reason
    assert out["d"].state == "not run"


def _receipt(plan_dict, packages):
    return {
        "plan": plan_dict,
        "environments": [{"name": "main", "packages": packages}],
        "backends": [{"name": "xinference", "status": "installed"}],
    }


def test_drift_against_plan_and_peers():
    recipes = load_recipes()
    cpu = _profile("linux-graviton3-cpu")
    hps = plan_hosts({"a": cpu}, {"a": PlanRequest()}, recipes)
    pid, pd = hps[0].plan_id, hps[0].plan.to_dict()
    other = plan_hosts({"z": cpu}, {"z": PlanRequest(portable_cpu=True)}, recipes)[0]
    plans = {n: {"plan_id": pid} for n in "abcd"}
    plans["e"] = {"plan_id": pid}
    pkgs = ["click==8.1.8", "xinference==4.1.0"]
    receipts = {
        "a": _receipt(pd, pkgs),
        "b": _receipt(pd, pkgs),
        "c": _receipt(pd, ["click==8.2.0", "xinference==4.1.0"]),
        "d": _receipt(other.plan.to_dict(), pkgs),
    }
    reasons = drift_reasons(plans, receipts)
    assert set(reasons) == {"c", "d", "e"}
    assert "differs from its peers" in reasons["c"] and "+main:click==8.2.0" in reasons["c"]
    assert f"its receipt is for plan {other.plan_id}, its plan is now {pid}" in reasons["d"]
    assert "no install receipt" in reasons["e"]
    assert plan_id(other.plan) != pid


def _variations(n: int) -> list[dict]:
    """n distinct profiles from the recorded ones: drivers, CPU flags, GPU counts, Pythons vary."""
    bases = [json.loads(p.read_text()) for p in sorted(PROFILES.glob("*.json"))]
    out = []
    i = 0
    while len(out) < n:
        d = copy.deepcopy(bases[i % len(bases)])
        k = i // len(bases)
        d["python"]["version"] = ["3.10.14", "3.11.9", "3.12.4"][k % 3]
        d["cpu"]["cores"] = 8 + k
        if d.get("nvidia") and d["nvidia"].get("driver_version"):
            major = int(d["nvidia"]["driver_version"].split(".")[0])
            d["nvidia"]["driver_version"] = f"{major}.{k % 90}.{k % 7:02d}"
        if d.get("gpus") and k % 4 == 1:
            d["gpus"] = d["gpus"] + [dict(d["gpus"][0], index=len(d["gpus"]))]
        if k % 5 == 2:
            d["cpu"]["flags"] = [f for f in d["cpu"].get("flags", []) if not f.startswith("avx512")]
        out.append(d)
        i += 1
    return out


def test_fleet_plan_over_1000_profiles_under_5_s(tmp_path):
    n = 1000
    work = tmp_path / "fleet"
    (work / "profiles").mkdir(parents=True)
    lines = ["[supervisor]", "h0000 ansible_host=198.18.200.1", "[workers]"]
    for i, d in enumerate(_variations(n)):
        name = f"h{i:04d}"
        (work / "profiles" / f"{name}.json").write_text(json.dumps(d))
        if i:
            lines.append(f"{name} ansible_host=10.{i // 250}.{i % 250}.1")
    inv = tmp_path / "hosts.ini"
    inv.write_text("\n".join(lines) + "\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = fleet_cli("plan", "-i", str(inv), "--dir", str(work), "--json", cwd=tmp_path)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert len(report["hosts"]) == n and all(h["status"] == "ok" for h in report["hosts"])
    groups = report["plans"]
    assert sum(len(g["hosts"]) for g in groups) == n and 1 < len(groups) < n
    print(
        f"\nfleet plan: {n} profiles, {len(groups)} plans, {len(report['builds'])} builds: "
        f"{wall:.2f} s wall, {cpu:.2f} s CPU (ansible-inventory included; plan phase "
        f"{report['phases']['plan']} s)"
    )
    # CPU time is what the command costs; wall time also counts whatever else shares the machine.
    assert cpu < 5.0, f"fleet plan over {n} profiles used {cpu:.2f} s of CPU ({wall:.2f} s wall)"


def test_fleet_plan_needs_profiles(tmp_path):
    inv = tmp_path / "hosts.ini"
    inv.write_text(INI)
    out = fleet_cli("plan", "-i", str(inv), "--dir", str(tmp_path / "f"), cwd=tmp_path)
    assert out.returncode == 1
    assert "no profile at" in out.stderr and "fleet probe" in out.stderr


def test_fleet_from_json_is_pure():
    data = {
        "_meta": {"hostvars": {"s": {"ansible_host": "198.18.0.1", "xinfer_api_port": "8000"}}},
        "supervisor": {"hosts": ["s"]},
        "workers": {"hosts": ["s"]},
    }
    fleet = fleet_from_json(data, Path("x"))
    assert fleet.hosts[0].role == "supervisor+worker" and fleet.endpoint == "http://198.18.0.1:8000"
    with pytest.raises(UserError, match="xinfer_api_port=70000"):
        fleet_from_json({**data, "_meta": {"hostvars": {"s": {"xinfer_api_port": 70000}}}}, Path("x"))


def test_a_task_whose_result_cannot_be_read_names_why(tmp_path):
    """Real ansible-playbook, on this machine (connection local), through fleet's callback: a data
    task whose output is not JSON fails, and the reason names the expression's error and the
    output it read, not ansible's bare "Unknown error."."""
    from provision.fleet.ansible import CALLBACKS, ansible_bin

    book = tmp_path / "book.yml"
    book.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        '    - name: "xinfer: report"\n'
        "      ansible.builtin.command: echo not-json\n"
        "      register: out\n"
        "      changed_when: (out.stdout | from_json).changed\n"
    )
    events = tmp_path / "events.jsonl"
    done = subprocess.run(
        [ansible_bin("ansible-playbook"), "-i", "localhost,", "-c", "local", str(book)],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS),
            "ANSIBLE_STDOUT_CALLBACK": "xinfer_events",
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
            "XINFER_FLEET_EVENTS": str(events),
        },
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    (event,) = [json.loads(line) for line in events.read_text().splitlines()]
    assert event["status"] == "failed"
    assert event["reason"].startswith("changed_when failed: "), event
    assert "not-json" in event["reason"]
    assert "[localhost] report: failed (changed_when failed" in done.stdout


# ------------------------------------------------------------------ trust at the edges (issue 19)


def _wheel_entry(d: Path, content: bytes, record: str | None) -> Path:
    """A wheelhouse entry: a real zip as the wheel, build.json with `record` as its sha256
    ("right": the wheel's own; None: no sha256 recorded)."""
    import zipfile

    from provision.install.wheelhouse import sha256_file

    d.mkdir(parents=True)
    wheel = d / "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llama_cpp/lib/libggml-cpu.so", content)
    meta: dict = {"version": "0.3.36", "backends": ["cpu"]}
    if record is not None:
        meta["sha256"] = sha256_file(wheel) if record == "right" else record
    (d / "build.json").write_text(json.dumps(meta))
    return wheel


def test_the_controller_ships_only_a_wheel_its_build_recorded(tmp_path):
    from provision.fleet.ops import recorded_build
    from provision.install.wheelhouse import sha256_file

    good = _wheel_entry(tmp_path / "good", b"a" * 64, "right")
    assert recorded_build(tmp_path / "good") == ((good, sha256_file(good)), None)
    _wheel_entry(tmp_path / "norecord", b"a" * 64, None)
    found, why = recorded_build(tmp_path / "norecord")
    assert found is None and "has no sha256 recorded" in (why or "")
    swapped = _wheel_entry(tmp_path / "swapped", b"a" * 64, "right")
    swapped.write_bytes(swapped.read_bytes().replace(b"a" * 64, b"b" * 64))
    found, why = recorded_build(tmp_path / "swapped")
    assert found is None and "does not match the sha256 recorded" in (why or "")
    assert recorded_build(tmp_path / "none") == (None, None)


def test_a_wheel_swapped_between_controller_and_host_is_refused(tmp_path):
    """The host side, run as the playbook runs it: the controller's sha256 in the host's variables,
    a wheel with other bytes in the host's wheelhouse. Refused before the bundle is unpacked."""
    from provision.install.wheelhouse import sha256_file

    root = tmp_path / "root"
    entry = root / "cache" / "xinfer-setup" / "wheelhouse" / "0.3.36-k"
    wheel = _wheel_entry(entry, b"a" * 64, "right")
    sent = sha256_file(wheel)
    wheel.write_bytes(wheel.read_bytes().replace(b"a" * 64, b"c" * 64))  # swapped on the way

    def hostctl(sha: str) -> subprocess.CompletedProcess:
        argv = ["install", "--root", str(root), "--tar", str(tmp_path / "b.tar"), "--bundle-id", "b1"]
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "provision.fleet.hostctl",
                *argv,
                "--llama-key",
                "0.3.36-k",
                "--llama-sha256",
                sha,
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
        )

    out = hostctl(sent)
    assert out.returncode == 1, (out.stdout, out.stderr)
    reason = json.loads(out.stdout)["reason"]
    assert "does not match the sha256 the controller sent" in reason and "refused" in reason
    assert not (root / "bundles").exists() and not (root / "logs").exists(), "nothing installed"
    # The wheel as the controller checked it passes, and its record is the controller's hash.
    from provision.fleet.pushed import check_pushed_wheel

    good = root / "good"
    w = _wheel_entry(good, b"a" * 64, None)
    assert check_pushed_wheel(good, sha256_file(w)) is None
    assert json.loads((good / "build.json").read_text())["sha256"] == sha256_file(w)


def _unit_settings(root: str) -> dict:
    return {
        "role": "worker",
        "root": root,
        "tag": f"{root}:worker",
        "marker": "XINFER_FLEET_DAEMON",
        "argv": [
            f"{root}/envs/main/bin/xinference-worker",
            "-e",
            "http://198.18.0.1:9997",
            "--x",
            'a"b %n $HOME',
        ],
        "env": {"XINFERENCE_HOME": f"{root}/xinference", "HF_HUB_OFFLINE": "1"},
    }


def test_unit_files_pass_systemd_analyze_verify(tmp_path):
    """systemd's own parser on our unit: a root with a space in it (ExecStart quoted), `%` and `$`
    escaped, a User= line. The same unit with the old unquoted ExecStart is rejected by it."""
    import shutil

    from provision.fleet.units import unit_name, unit_text

    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze comes with the systemd package (scripts/ci-deps.sh)"
    root = tmp_path / "xinfer root"
    program = root / "envs" / "main" / "bin" / "xinference-worker"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    settings = _unit_settings(str(root))
    text = unit_text(settings, root / "logs" / "worker.log", "xinference")
    assert "\nUser=xinference\n" in text
    unit = tmp_path / unit_name("worker", settings["tag"])
    unit.write_text(text)
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    unquoted = tmp_path / "xinference-worker-unquoted.service"
    unquoted.write_text(
        "\n".join(
            f"ExecStart={program} -e x" if ln.startswith("ExecStart=") else ln for ln in text.splitlines()
        )
    )
    bad = subprocess.run([analyze, "verify", str(unquoted)], capture_output=True, text=True)
    assert bad.returncode != 0 and "is not executable" in bad.stderr, bad.stderr


def test_service_user_defaults_to_a_dedicated_account_root_only_when_asked():
    data = json.loads(json.dumps(_INV_JSON))
    fleet = fleet_from_json(data, Path("hosts.ini"))
    assert {h.service_user for h in fleet.hosts} == {"xinference"}
    data["_meta"]["hostvars"]["w1"]["xinfer_service_user"] = "root"
    assert fleet_from_json(data, Path("hosts.ini")).host("w1").service_user == "root"
    data["_meta"]["hostvars"]["w1"]["xinfer_service_user"] = "bad user;"
    with pytest.raises(UserError, match="xinfer_service_user"):
        fleet_from_json(data, Path("hosts.ini"))


def test_systemd_state_is_read_from_systemctl_show():
    """`systemctl show --property=ActiveState,SubState,MainPID,NRestarts UNIT` prints KEY=value
    lines (systemctl(1), "show"); a unit restarting after a crash is not alive."""
    from provision.fleet.units import parse_show, state_of

    running = state_of(parse_show("ActiveState=active\nSubState=running\nMainPID=4242\nNRestarts=0\n"))
    assert running == {"alive": True, "pid": 4242, "state": "active (running)", "restarts": 0}
    crashed = state_of(parse_show("ActiveState=activating\nSubState=auto-restart\nMainPID=0\nNRestarts=3\n"))
    assert (
        not crashed["alive"] and crashed["state"] == "activating (auto-restart)" and crashed["restarts"] == 3
    )
    assert not state_of(parse_show("ActiveState=failed\nSubState=failed\nMainPID=0\n"))["alive"]
    assert state_of({}, "Failed to connect to bus")["state"] == "Failed to connect to bus"


_INV_JSON = {
    "supervisor": {"hosts": ["s1"]},
    "workers": {"hosts": ["w1", "w2"]},
    "_meta": {
        "hostvars": {
            "s1": {"ansible_host": "198.18.0.1", "xinfer_root": "/srv/a"},
            "w1": {"ansible_host": "198.18.0.2", "xinfer_root": "/srv/a"},
            "w2": {"ansible_host": "198.18.0.3", "xinfer_root": "/srv/a"},
        }
    },
}


def test_status_fails_dead_unstarted_and_unlisted_daemons():
    from provision.fleet.health import cluster_failures

    fleet = fleet_from_json(json.loads(json.dumps(_INV_JSON)), Path("hosts.ini"))
    alive = {"alive": True, "state": "running"}
    healthy = {"s1": {"supervisor": alive}, "w1": {"worker": alive}, "w2": {"worker": alive}}
    listed = {"198.18.0.2", "198.18.0.3"}
    assert cluster_failures(fleet, healthy, listed) == {}
    dead = {**healthy, "w1": {"worker": {"alive": False, "state": "not running"}}}
    assert cluster_failures(fleet, dead, listed) == {"w1": "worker is not running: not running"}
    unstarted = {**healthy, "w2": {}}
    assert "worker not started" in cluster_failures(fleet, unstarted, listed)["w2"]
    unlisted = cluster_failures(fleet, healthy, {"198.18.0.2"})
    assert unlisted == {
        "w2": "worker is running but the supervisor at http://198.18.0.1:9997 does not list 198.18.0.3"
    }
    api_down = cluster_failures(fleet, healthy, None, "connection refused")
    assert list(api_down) == ["s1"] and "does not answer: connection refused" in api_down["s1"]
    # Xinference 4.1.0's GET /v1/workers while w2 is dead (its supervisor log, 198.18.0.3 here):
    # a 500 naming the dead worker. The supervisor itself answers, so only w2 is failed.
    list_error = "[address=127.0.0.1:38909, pid=7553] [Errno 111] Connect call failed ('198.18.0.3', 9998)"
    on_list = cluster_failures(fleet, healthy, None, None, list_error)
    assert list(on_list) == ["w2"] and on_list["w2"].startswith("the supervisor fails to reach this worker")
    assert cluster_failures(fleet, {"s1": {"supervisor": alive}}, listed) == {}  # w1, w2 not reached


def test_cached_facts_are_keyed_by_the_inventory_variables(tmp_path):
    """Seen in issue 19: a new inventory gave xinfer_root new values for the same host names,
    and the old cached roots were used. Changed variables invalidate that host's entry."""
    from provision.fleet.ops import Ctx, read_facts, write_facts

    fleet = fleet_from_json(json.loads(json.dumps(_INV_JSON)), Path("hosts.ini"))
    ctx = Ctx(fleet, tmp_path)
    write_facts(ctx, {h.name: HostFacts("3.11.2", "x86_64", "glibc 2.36", "/srv/a") for h in fleet.hosts})
    assert set(read_facts(ctx)) == {"s1", "w1", "w2"}
    moved = json.loads(json.dumps(_INV_JSON))
    moved["_meta"]["hostvars"]["w2"]["xinfer_root"] = "/srv/b"
    ctx2 = Ctx(fleet_from_json(moved, Path("hosts.ini")), tmp_path)
    assert set(read_facts(ctx2)) == {"s1", "w1"}


def test_controller_dir_is_the_state_dir_with_a_gitignore(tmp_path):
    """No --dir: the user's state directory, not ./fleet in a checkout; any controller dir gets a
    .gitignore of `*`, so `git add -A` in a checkout never takes the cluster's secrets."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    inv = checkout / "hosts.ini"
    inv.write_text(INI)
    state = tmp_path / "state"
    fleet_cli("plan", "-i", str(inv), cwd=checkout, env={"XDG_STATE_HOME": str(state)})
    assert (state / "xinfer-setup" / "fleet" / ".gitignore").read_text().splitlines()[-1] == "*"
    assert not (checkout / "fleet").exists()
    fleet_cli("plan", "-i", str(inv), "--dir", str(checkout / "fleet"), cwd=checkout)
    (checkout / "fleet" / "secrets").mkdir(mode=0o700)
    (checkout / "fleet" / "secrets" / "cluster.json").write_text("{}")
    status = subprocess.run(
        ["git", "status", "--porcelain", "-uall"], cwd=checkout, capture_output=True, text=True
    )
    assert status.stdout.split() == ["??", "hosts.ini"], status.stdout


def test_secrets_are_redacted_from_what_ansible_writes(tmp_path):
    from provision.fleet.ansible import fleet_secrets, redact

    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "cluster.json").write_text(
        json.dumps(
            {
                "url": "http://198.18.0.1:9997",
                "username": "admin",
                "password": "pw-123456",
                "api_key": "sk-abc",
            }
        )
    )
    (tmp_path / "secrets" / "api-key").write_text("sk-abc\n")
    known = fleet_secrets(tmp_path)
    assert known == {"pw-123456", "sk-abc"}
    line = 'ok: [s1] => {"stdout": "login admin pw-123456 key sk-abc at http://198.18.0.1:9997"}'
    assert (
        redact(line, known)
        == 'ok: [s1] => {"stdout": "login admin [redacted] key [redacted] at http://198.18.0.1:9997"}'
    )


def test_hostctl_status_tells_a_live_daemon_from_a_dead_and_a_stopped_one(tmp_path):
    """hostctl's supervised daemon (no systemd here), running a real HTTP server on 127.0.0.1:
    status says alive; after SIGKILL of the daemon and its server, not alive and why; after
    `stop`, the role is not listed at all (stopped on purpose is not dead)."""
    import contextlib
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "root"

    def hostctl(*argv: str) -> tuple[int, dict]:
        out = subprocess.run(
            [sys.executable, "-m", "provision.fleet.hostctl", *argv], capture_output=True, text=True, cwd=REPO
        )
        return out.returncode, json.loads(out.stdout.strip().splitlines()[-1])

    server = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    code, started = hostctl(
        "start", "--role", "worker", "--root", str(root), "--argv", json.dumps(server),
        "--address", "127.0.0.1", "--ready-port", str(port), "--no-systemd",
    )  # fmt: skip
    try:
        assert code == 0 and started["ready"], started
        code, st = hostctl("status", "--root", str(root), "--no-systemd")
        assert st["roles"]["worker"]["alive"] and st["roles"]["worker"]["pid"] == started["pid"]
        os.killpg(started["pid"], signal.SIGKILL)
        for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
            with contextlib.suppress(OSError):  # a process gone meanwhile
                if f"http.server\0{port}".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.5)
        code, st = hostctl("status", "--root", str(root), "--no-systemd")
        worker = st["roles"]["worker"]
        assert not worker["alive"] and worker["state"].startswith("its daemon is gone"), worker
    finally:
        hostctl("stop", "--role", "worker", "--root", str(root), "--no-systemd")
    code, st = hostctl("status", "--root", str(root), "--no-systemd")
    assert st["roles"] == {}
