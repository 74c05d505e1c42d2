"""OS, architecture and C library."""

from __future__ import annotations

import re

from provision.probe.found import Found
from provision.probe.system import System
from provision.profile import SYSTEMS, OSInfo


def parse_musl_loader(text: str) -> str | None:
    """What musl's dynamic loader prints when run with no arguments (on stderr):

    musl libc (x86_64)
    Version 1.2.4
    Dynamic Program Loader
    """
    if "musl libc" not in text:
        return None
    m = re.search(r"^Version (\d+\.\d+(?:\.\d+)?)", text, re.M)
    return f"musl {m.group(1)}" if m else "musl"


def detect_libc(system: System) -> Found[str | None]:
    if system.system != "linux":
        return Found(None)
    if system.glibc_confstr:
        return Found(system.glibc_confstr)  # already "glibc 2.36"
    loaders = sorted(system.path("/lib").glob("ld-musl-*.so.1"))
    if not loaders:
        return Found(None, ("os: C library not recognised (neither glibc nor musl)",))
    try:
        result = system.run([str(loaders[0])], 2.0)
    except Exception as e:
        return Found("musl", (f"os: musl found, version unknown ({e})",))
    return Found(parse_musl_loader(result.stderr + result.stdout) or "musl")


def os_info(system: System) -> Found[OSInfo]:
    notes: list[str] = []
    name = system.system
    if name not in SYSTEMS:
        # The profile schema knows three systems; a BSD still gets a profile, labelled linux-like.
        notes.append(f"os: {name!r} is not a supported system; profiled as linux")
        name = "linux"
    libc = detect_libc(system)
    notes.extend(libc.notes)
    return Found(
        OSInfo(system=name, release=system.release, machine=system.machine, libc=libc.value), tuple(notes)
    )
