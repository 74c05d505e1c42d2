"""A network namespace with only loopback up: the offline machine tests install and serve in.

    from tests.support.netns import loopback_only_netns

    with loopback_only_netns() as ns:
        subprocess.run(ns.wrap(["python", "-c", "..."]), check=True)

Inside, only 127.0.0.1/::1 answer: no route, no DNS, so any index or hub request fails at
once. The filesystem, users and environment are the host's (`ip netns exec` changes only the
network), so venvs and caches made outside are usable inside. The namespace is deleted on
exit, also when the body raises. Needs root and iproute2 (`ip`); `netns_available()` says
whether this machine can, for a skip with a reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Netns:
    name: str

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """argv run inside the namespace (`ip netns exec NAME argv...`)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        """subprocess.run inside the namespace; text output captured unless told otherwise."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.wrap(argv), **kw)


def netns_available() -> str | None:
    """None when namespaces can be made here, else why not (for pytest.skip)."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "creating a network namespace needs root"
    return None


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {out.stderr.strip()}")


@contextmanager
def loopback_only_netns(prefix: str = "xtest") -> Iterator[Netns]:
    """A fresh namespace with `lo` up and nothing else; always deleted afterwards."""
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield Netns(name)
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
