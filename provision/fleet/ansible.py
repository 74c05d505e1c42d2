"""Running the shipped playbooks with ansible-playbook and collecting what each host did.

The playbooks (playbooks/*.yml) are plain Ansible: `ansible-playbook -i hosts.ini
playbooks/up.yml -e @fleet/ansible/up-vars.json` does what `fleet up` does on the hosts.
fleet writes that vars file, runs ansible-playbook with our stdout callback
(callback_plugins/xinfer_events.py: a line per host and step, results as JSON lines) and
folds the events into one outcome per host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from provision.errors import OperationFailed
from provision.fleet.inventory import Fleet, ansible_bin

PLAYBOOKS = Path(__file__).with_name("playbooks")
CALLBACKS = Path(__file__).with_name("callback_plugins")

HostState = Literal["ok", "changed", "failed", "unreachable", "not run"]


@dataclass
class HostOutcome:
    name: str
    state: HostState = "not run"
    reason: str | None = None
    changed_steps: list[str] = field(default_factory=list)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # task name -> hostctl JSON

    @property
    def ok(self) -> bool:
        return self.state in ("ok", "changed")


@dataclass
class PlayRun:
    playbook: str
    seconds: float
    returncode: int
    hosts: dict[str, HostOutcome]
    log: Path

    def failed(self) -> list[HostOutcome]:
        return [h for h in self.hosts.values() if h.state in ("failed", "unreachable")]


def fold_events(events: list[dict[str, Any]], names: list[str]) -> dict[str, HostOutcome]:
    """Events (one per task and host, in order) -> one outcome per host (pure)."""
    out = {n: HostOutcome(n) for n in names}
    for e in events:
        h = out.setdefault(e["host"], HostOutcome(e["host"]))
        if e.get("data") is not None:
            h.data[e["task"]] = e["data"]
        status = e["status"]
        if status == "skipped" or status == "ignored":
            continue
        if status in ("failed", "unreachable"):
            if h.state not in ("failed", "unreachable"):
                h.state = status
                h.reason = f"{e['task'].removeprefix('xinfer:').strip()}: {e.get('reason') or status}"
            continue
        if h.state in ("failed", "unreachable"):
            continue
        if e.get("changed"):
            h.state = "changed"
            h.changed_steps.append(e["task"].removeprefix("xinfer:").strip())
        elif h.state == "not run":
            h.state = "ok"
    return out


def run_playbook(
    playbook: str,
    fleet: Fleet,
    workdir: Path,
    extra_vars: dict[str, Any],
    limit: list[str] | None = None,
    forks: int | None = None,
    echo=None,
) -> PlayRun:
    """Run playbooks/<playbook>.yml over the fleet; progress lines go to `echo` (stderr by default)."""
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    adir = workdir / "ansible"
    adir.mkdir(parents=True, exist_ok=True)
    vars_file = adir / f"{playbook}-vars.json"
    vars_file.write_text(json.dumps(extra_vars, indent=2))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    events_path = adir / f"{playbook}-{stamp}.events.jsonl"
    log = adir / f"{playbook}-{stamp}.log"
    events_path.unlink(missing_ok=True)
    argv = [
        ansible_bin("ansible-playbook"),
        "-i",
        str(fleet.inventory),
        str(PLAYBOOKS / f"{playbook}.yml"),
        "-e",
        f"@{vars_file}",
    ]
    if limit:
        argv += ["--limit", ",".join(limit)]
    env = {
        **os.environ,
        "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS),
        "ANSIBLE_STDOUT_CALLBACK": "xinfer_events",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_DEPRECATION_WARNINGS": "0",
        "ANSIBLE_PIPELINING": os.environ.get("ANSIBLE_PIPELINING", "1"),
        # Ansible's default ssh args without -C: what fleet pushes (wheels) is compressed already,
        # and compressing it again costs the controller's CPU per host.
        "ANSIBLE_SSH_ARGS": os.environ.get("ANSIBLE_SSH_ARGS", "-o ControlMaster=auto -o ControlPersist=60s"),
        "ANSIBLE_FORKS": str(forks or os.environ.get("ANSIBLE_FORKS") or max(5, min(50, len(fleet.hosts)))),
        "ANSIBLE_PYTHON_INTERPRETER": os.environ.get("ANSIBLE_PYTHON_INTERPRETER", "auto_silent"),
        "XINFER_FLEET_EVENTS": str(events_path),
    }
    started = time.monotonic()
    known = fleet_secrets(workdir)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    except OSError as e:
        raise OperationFailed(f"cannot run ansible-playbook: {e.strerror}") from None
    assert proc.stdout is not None
    with log.open("w") as f:
        for line in proc.stdout:  # whole lines: a secret is never split across two writes
            line = redact(line, known)
            f.write(line)
            line = line.rstrip()
            if line.startswith("[") and "] " in line:
                echo(line)
    code = proc.wait()
    # Secrets this run made (up's credentials) are redacted from what it wrote, too.
    made = fleet_secrets(workdir) - known
    if made:
        for path in (log, events_path):
            if path.exists():
                text = path.read_text(errors="replace")
                if redact(text, made) != text:
                    path.write_text(redact(text, made))
    events = []
    if events_path.exists():
        for line in events_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    hosts = fold_events(events, [h.name for h in fleet.hosts if not limit or h.name in limit])
    if code != 0 and not events:
        raise OperationFailed(
            f"ansible-playbook {playbook}.yml failed (exit {code}) before any host ran: {_tail(log)}"
        )
    return PlayRun(playbook, round(time.monotonic() - started, 1), code, hosts, log)


def fleet_secrets(workdir: Path) -> set[str]:
    """Every secret the controller keeps (secrets/*.json values, secrets/api-key), to redact."""
    found: set[str] = set()
    d = workdir / "secrets"
    for path in d.glob("*.json") if d.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            found |= {v for k, v in data.items() if isinstance(v, str) and k not in ("username", "url")}
    key = d / "api-key"
    if key.is_file():
        found.add(key.read_text().strip())
    return {s for s in found if s}


def redact(text: str, secrets: set[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text


def _tail(path: Path) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-3:])[-500:]
