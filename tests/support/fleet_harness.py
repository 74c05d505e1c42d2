"""Three hosts on this machine for the fleet tests: each in its own network namespace, on a
bridge, with its own address and its own sshd (Debian's openssh-server, key auth only).

The controller (the test process) stays in the root namespace and reaches the hosts over the
bridge. Addresses come from 198.18.0.0/15 (RFC 2544, benchmarking; no real server uses it),
one free /24 per harness, so traffic stays on these namespaces. Hosts have no route beyond
the bridge: no internet, as in an air-gapped rack.

Everything is torn down even on failure: every process in the namespaces (sshd, Xinference)
is killed, the namespaces, veths and the bridge are deleted.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
HOST_PYTHON = "/usr/bin/python3"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def ensure_sshd() -> None:
    """sshd comes from the system (scripts/ci-deps.sh installs it, once, before the tests)."""
    if not Path(SSHD).exists():
        raise RuntimeError(f"{SSHD} not found: run `bash scripts/ci-deps.sh` (installs openssh-server)")


def _python_version(python: str) -> str | None:
    try:
        out = subprocess.run(
            [python, "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def old_python(uv: str | None = None) -> tuple[str, str] | None:
    """A real interpreter older than 3.10 (a host fleet must refuse), with its version: one on
    PATH or under pyenv, else uv's managed build (`uv python install 3.9`, where its download
    is reachable). None when there is none to be had."""
    candidates = [shutil.which(f"python3.{m}") for m in (9, 8, 7)]
    pyenv = Path.home().glob(".pyenv/versions/3.[6-9].*/bin/python3")
    candidates += sorted((str(p) for p in pyenv), reverse=True)
    for python in filter(None, candidates):
        version = _python_version(python)
        if version and tuple(int(x) for x in version.split(".")[:2]) < (3, 10):
            return python, version
    if uv:
        subprocess.run([uv, "python", "install", "3.9"], capture_output=True, timeout=600)
        found = subprocess.run(
            [uv, "python", "find", "--managed-python", "3.9"], capture_output=True, text=True
        )
        python = found.stdout.strip()
        version = _python_version(python) if found.returncode == 0 and python else None
        if version:
            return python, version
    return None


def _free_subnet() -> int:
    used = _run("ip", "-4", "route").stdout + _run("ip", "-4", "addr").stdout
    for _ in range(200):
        n = 20 + secrets.randbelow(230)
        if f"198.18.{n}." not in used:
            return n
    raise RuntimeError("no free 198.18.x.0/24 for the fleet harness")


def ns_pids(ns: str) -> list[int]:
    out = _run("ip", "netns", "pids", ns, check=False).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class FleetHostNs:
    name: str
    ns: str
    address: str
    dir: Path
    root: Path
    sshd: subprocess.Popen | None = None

    def processes(self) -> list[tuple[int, str]]:
        return [(p, _comm(p)) for p in ns_pids(self.ns)]

    def exec(self, *argv: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True, **kw)


@dataclass
class FleetHarness:
    base: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    hosts: list[FleetHostNs] = field(default_factory=list)
    subnet: int = 0
    bridge: str = ""
    key: Path | None = None

    # ------------------------------------------------------------ set up
    def up(self, n: int = 3) -> FleetHarness:
        ensure_sshd()
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir
        atexit.register(self.down)
        self.subnet = _free_subnet()
        self.bridge = f"xfb{self.tag}"
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"198.18.{self.subnet}.1/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        self.key = self.base / "controller_key"
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-controller", "-f", str(self.key))
        for i in range(1, n + 1):
            self.hosts.append(self._add_host(i))
        for h in self.hosts:
            self.start_sshd(h)
        return self

    def _add_host(self, i: int) -> FleetHostNs:
        ns = f"xfleet-{self.tag}-{i}"
        outer, inner = f"xfv{self.tag}{i}", f"xfp{self.tag}{i}"
        address = f"198.18.{self.subnet}.{10 + i}"
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _run("ip", "link", "set", outer, "master", self.bridge)
        _run("ip", "link", "set", outer, "up")
        _run("ip", "link", "set", inner, "netns", ns)
        for argv in (
            ("ip", "link", "set", inner, "name", "eth0"),
            ("ip", "addr", "add", f"{address}/24", "dev", "eth0"),
            ("ip", "link", "set", "eth0", "up"),
            ("ip", "link", "set", "lo", "up"),
        ):
            _run("ip", "netns", "exec", ns, *argv)
        d = self.base / f"host{i}"
        (d / "root").mkdir(parents=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "ssh_host_ed25519_key"))
        shutil.copy(f"{self.key}.pub", d / "authorized_keys")
        (d / "sshd_config").write_text(
            f"ListenAddress {address}\nPort 22\nHostKey {d / 'ssh_host_ed25519_key'}\n"
            f"PidFile {d / 'sshd.pid'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPrintMotd no\n"
            "MaxStartups 50\nMaxSessions 50\nSubsystem sftp internal-sftp\n"
        )
        return FleetHostNs(name=f"host{i}", ns=ns, address=address, dir=d, root=d / "root")

    def start_sshd(self, h: FleetHostNs) -> None:
        log = (h.dir / "sshd.log").open("ab")
        h.sshd = subprocess.Popen(
            ["ip", "netns", "exec", h.ns, SSHD, "-D", "-e", "-f", str(h.dir / "sshd_config")],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((h.address, 22), timeout=1):
                return
            if h.sshd.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"sshd in {h.ns} did not start: {(h.dir / 'sshd.log').read_text()[-1000:]}")

    def stop_sshd(self, h: FleetHostNs) -> None:
        """The host goes away for SSH: the listener and every session it forked (Ansible keeps
        persistent connections) are killed."""
        for pid, comm in h.processes():
            if comm == "sshd":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if h.sshd is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                h.sshd.wait(timeout=5)
        # Ansible's ControlPersist master for this host would otherwise look alive for a while.
        for sock in (self.base / "cp").glob("*"):
            with contextlib.suppress(OSError):
                subprocess.run(
                    ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"], capture_output=True, timeout=5
                )

    # ------------------------------------------------------------ inventory
    def inventory(self, path: Path, **extra_vars: str) -> Path:
        lines = ["[supervisor]", self._line(self.hosts[0]), "", "[workers]"]
        lines += [self._line(h) for h in self.hosts[1:]]
        common = {
            "ansible_user": "root",
            "ansible_python_interpreter": HOST_PYTHON,
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": "'-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "-o ConnectTimeout=5 -o LogLevel=ERROR'",
            # Our own ControlPersist sockets: stopping a host's sshd closes only ours.
            "ansible_control_path_dir": str(self.base / "cp"),
            **extra_vars,
        }
        lines += ["", "[all:vars]"] + [f"{k}={v}" for k, v in common.items()]
        path.write_text("\n".join(lines) + "\n")
        return path

    @staticmethod
    def _line(h: FleetHostNs) -> str:
        return f"{h.name} ansible_host={h.address} xinfer_root={h.root}"

    # ------------------------------------------------------------ tear down
    def down(self) -> None:
        for h in self.hosts:
            for _ in range(3):
                pids = ns_pids(h.ns)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.3)
            if h.sshd is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    h.sshd.wait(timeout=5)
            _run("ip", "netns", "del", h.ns, check=False)
            _run("ip", "link", "del", f"xfv{self.tag}{h.name[-1]}", check=False)
        if self.bridge:
            _run("ip", "link", "del", self.bridge, check=False)
        self.hosts = []
        self.bridge = ""
