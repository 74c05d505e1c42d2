"""Installing for another machine's profile on this one: can this host do it?

A GPU box's environments can be installed and compiled on a CPU host (a CI runner building an
image, a staging box making a bundle) when this host can run the wheels chosen for the target:
the same OS and architecture, a glibc at least the target's (manylinux wheels run on newer
glibc, never older), and the same Python minor (the environments' interpreter and every cpXY
wheel). The target's GPUs and driver decide what is built; this host's toolchain builds it.
Pure: two profiles in, the differences out.
"""

from __future__ import annotations

from provision.profile import HostProfile


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def target_mismatches(target: HostProfile, host: HostProfile) -> list[str]:
    """What keeps this host from installing the target's environments; [] when it can."""
    out: list[str] = []
    if target.os.system != host.os.system:
        out.append(f"the target runs {target.os.system}, this host {host.os.system}")
    if target.os.arch != host.os.arch:
        out.append(f"the target is {target.os.arch}, this host {host.os.arch}")
    if target.os.system == "linux" and host.os.system == "linux":
        want, have = target.os.glibc_version, host.os.glibc_version
        if want is None or have is None:
            out.append(
                f"the target's C library ({target.os.libc or 'unknown'}) and this host's "
                f"({host.os.libc or 'unknown'}) must both be glibc"
            )
        elif have < want:
            out.append(
                f"this host's glibc {have[0]}.{have[1]} is older than the target's {want[0]}.{want[1]}: "
                "the target's wheels need at least that"
            )
    if _minor(target.python.version) != _minor(host.python.version):
        out.append(
            f"the target runs Python {_minor(target.python.version)}, this host "
            f"{_minor(host.python.version)}: cpXY wheels are per Python minor"
        )
    if target.python.implementation != host.python.implementation:
        out.append(f"the target runs {target.python.implementation}, this host {host.python.implementation}")
    return out


def glibc_floor_note(target: HostProfile, host: HostProfile) -> str | None:
    """A source build here links against this host's glibc: say so when the target's is older."""
    want, have = target.os.glibc_version, host.os.glibc_version
    if want and have and have > want:
        return (
            f"source builds link against this host's glibc {have[0]}.{have[1]}, newer than the "
            f"target's {want[0]}.{want[1]}: verify checks the glibc symbols they need"
        )
    return None
