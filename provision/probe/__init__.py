"""The probe: what this machine has (OS, CPU, memory, GPUs, drivers, build tools) as a HostProfile.

`probe_host()` is the entry point; `System` carries the layers it reads through (files,
commands, NVML), which tests replace. The detection order is in provision/probe/host.py.
"""

from provision.probe.host import probe_host
from provision.probe.system import System

__all__ = ["System", "probe_host"]
