"""The fleet's inventory: a normal Ansible inventory (INI or YAML), read by Ansible itself.

`ansible-inventory -i FILE --list` gives every host with its merged variables (group_vars,
host_vars, children) exactly as the playbooks will see them, so there is one parser only.
With ANSIBLE_INVENTORY_UNPARSED_FAILED a file no inventory plugin can read is an error
instead of Ansible's default warning and an empty inventory.

Layout asked of the user: a `supervisor` group with exactly one host and a `workers` group
(the supervisor host may also be a worker). Per-host variables we read:
  xinfer_root       where the host keeps our environments, caches, receipts, XINFERENCE_HOME,
                    logs and pid files (default: the user's data dir on that host)
  xinfer_portable   build llama.cpp for any CPU of the arch (mixed CPUs share one build)
  xinfer_backends   backends to install (list or comma-separated); default: every backend
  xinfer_address    the address other hosts reach this one at (default ansible_host, then name)
  xinfer_api_port, xinfer_supervisor_port, xinfer_worker_port: fixed ports (defaults below)
  xinfer_service_user  the User= of the daemons' systemd units (default: a system account
                    `xinference`, made when missing; root only when set to root)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from provision.errors import OperationFailed, UserError
from provision.plan import BACKENDS

# Xinference's own default endpoint port is 9997; the other two are fixed here so firewalls
# can be opened for known ports (Xinference picks random ones when not told).
DEFAULT_API_PORT = 9997
DEFAULT_SUPERVISOR_PORT = 9999
DEFAULT_WORKER_PORT = 9998
DEFAULT_ROOT = "~/.local/share/xinfer-setup"

Role = Literal["supervisor", "worker", "supervisor+worker"]


@dataclass(frozen=True)
class FleetHost:
    name: str
    address: str
    role: Role
    root: str
    portable: bool = False
    backends: tuple[str, ...] | None = None  # None: every backend (--auto)
    api_port: int = DEFAULT_API_PORT
    supervisor_port: int = DEFAULT_SUPERVISOR_PORT
    worker_port: int = DEFAULT_WORKER_PORT
    service_user: str = "xinference"
    vars: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_supervisor(self) -> bool:
        return self.role in ("supervisor", "supervisor+worker")

    @property
    def is_worker(self) -> bool:
        return self.role in ("worker", "supervisor+worker")


@dataclass(frozen=True)
class Fleet:
    inventory: Path
    hosts: tuple[FleetHost, ...]

    @property
    def supervisor(self) -> FleetHost:
        return next(h for h in self.hosts if h.is_supervisor)

    @property
    def workers(self) -> tuple[FleetHost, ...]:
        return tuple(h for h in self.hosts if h.is_worker)

    def host(self, name: str) -> FleetHost:
        return next(h for h in self.hosts if h.name == name)

    @property
    def endpoint(self) -> str:
        s = self.supervisor
        return f"http://{s.address}:{s.api_port}"


def ansible_bin(name: str) -> str:
    """An Ansible command beside this interpreter (the [fleet] extra's), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise UserError(
            f"`{name}` not found: fleet needs ansible-core, install it with pip install 'xinfer-setup[fleet]'"
        )
    return found


def require_ansible() -> None:
    ansible_bin("ansible-playbook")
    ansible_bin("ansible-inventory")


def read_inventory_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"inventory {path} does not exist")
    env = {**os.environ, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "1", "ANSIBLE_NOCOLOR": "1"}
    try:
        out = subprocess.run(
            [ansible_bin("ansible-inventory"), "-i", str(path), "--list"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"ansible-inventory did not read {path} within 120 s") from None
    if out.returncode != 0:
        raise UserError(f"inventory {path} does not parse: {_first_error(out.stderr)}")
    try:
        return json.loads(out.stdout)
    except ValueError:
        raise UserError(f"inventory {path}: ansible-inventory printed no JSON") from None


def _first_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "Unable to parse" in ln or "Failed" in ln]
    text = (errors or lines or ["no output"])[0]
    return text.replace("[ERROR]: ", "").replace("[WARNING]: ", "")[:300]


def group_hosts(data: dict[str, Any], group: str) -> list[str]:
    """Hosts of a group, children included, in inventory order."""
    seen: list[str] = []
    entry = data.get(group) or {}
    for h in entry.get("hosts", []):
        if h not in seen:
            seen.append(h)
    for child in entry.get("children", []):
        for h in group_hosts(data, child):
            if h not in seen:
                seen.append(h)
    return seen


def _backends(value: Any, host: str) -> tuple[str, ...] | None:
    if value in (None, "", "auto"):
        return None
    items = value if isinstance(value, list) else str(value).replace(",", " ").split()
    unknown = [b for b in items if b not in BACKENDS]
    if unknown:
        raise UserError(
            f"host {host}: xinfer_backends has unknown backend '{unknown[0]}' "
            f"(choose from {', '.join(BACKENDS)})"
        )
    return tuple(dict.fromkeys(items))


def _port(hv: dict[str, Any], key: str, default: int, host: str) -> int:
    value = hv.get(key, default)
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise UserError(f"host {host}: {key}={value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise UserError(f"host {host}: {key}={port} is not a port number (1-65535)")
    return port


def _user(value: Any, host: str) -> str:
    if value in (None, ""):
        return "xinference"
    user = str(value)
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        raise UserError(f"host {host}: xinfer_service_user={user!r} is not a user name")
    return user


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


_UNROUTABLE = ("0.0.0.0", "::", "localhost")


def fleet_from_json(data: dict[str, Any], path: Path) -> Fleet:
    """Check the layout and build the Fleet (pure, so every bad input is tested without Ansible)."""
    sup = group_hosts(data, "supervisor")
    if not sup:
        raise UserError(f"inventory {path} has no `supervisor` group with a host in it")
    if len(sup) > 1:
        raise UserError(
            f"inventory {path}: the `supervisor` group must hold one host, it holds "
            f"{len(sup)} ({', '.join(sup)})"
        )
    workers = group_hosts(data, "workers")
    if not workers:
        raise UserError(f"inventory {path} has no `workers` group with a host in it")
    hostvars = (data.get("_meta") or {}).get("hostvars") or {}
    hosts = []
    for name in dict.fromkeys(sup + workers):
        hv = hostvars.get(name, {})
        role: Role = (
            "supervisor+worker"
            if name in sup and name in workers
            else "supervisor"
            if name in sup
            else "worker"
        )
        address = str(hv.get("xinfer_address") or hv.get("ansible_host") or name)
        if len(sup) + len(workers) > 1 and (address in _UNROUTABLE or address.startswith("127.")):
            raise UserError(
                f"host {name}: address {address} is not reachable from other hosts; set ansible_host "
                "or xinfer_address to an address the other hosts can route to"
            )
        hosts.append(
            FleetHost(
                name=name,
                address=address,
                role=role,
                root=str(hv.get("xinfer_root") or DEFAULT_ROOT),
                portable=_truthy(hv.get("xinfer_portable", False)),
                backends=_backends(hv.get("xinfer_backends"), name),
                api_port=_port(hv, "xinfer_api_port", DEFAULT_API_PORT, name),
                supervisor_port=_port(hv, "xinfer_supervisor_port", DEFAULT_SUPERVISOR_PORT, name),
                worker_port=_port(hv, "xinfer_worker_port", DEFAULT_WORKER_PORT, name),
                service_user=_user(hv.get("xinfer_service_user"), name),
                vars=dict(hv),
            )
        )
    return Fleet(inventory=path, hosts=tuple(hosts))


def load_fleet(path: str | Path) -> Fleet:
    p = Path(path).expanduser().absolute()
    require_ansible()
    return fleet_from_json(read_inventory_json(p), p)
