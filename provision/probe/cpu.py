"""CPU brand, instruction-set flags, usable cores and memory.

py-cpuinfo's public get_cpu_info() costs about 1.15 s (it spawns a child to run CPUID and
sleeps to measure the clock). We call its per-source parsers instead, and hand them the
text we already read, by replacing the DataSource method that would have shelled out
(`cat /proc/cpuinfo`, `sysctl ...`). Those are private names, which is why pyproject pins
py-cpuinfo==9.0.0; when they are missing we fall back to get_cpu_info().
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any

from provision.probe import apple
from provision.probe.found import Found
from provision.probe.system import System
from provision.profile import CPUInfo

# (CPU implementer, CPU part) from aarch64 /proc/cpuinfo -> core name. /proc/cpuinfo on
# aarch64 has no "model name", so without this the brand of a Graviton is empty.
ARM_PARTS = {
    (0x41, 0xD0C): "Neoverse-N1",  # Graviton2, Ampere Altra
    (0x41, 0xD40): "Neoverse-V1",  # Graviton3
    (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4F): "Neoverse-V2",  # Graviton4, NVIDIA Grace
}

# macOS sysctl spells some x86 features differently from Linux; llama.cpp's and our
# planner's checks use the Linux names.
X86_FLAG_ALIASES = {"avx1.0": "avx", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "pni": "sse3"}

# DataSource is py-cpuinfo's class-level state: two probes in one process must take turns.
_DATA_SOURCE_LOCK = threading.Lock()


def _with_source(cpuinfo_mod: Any, method: str, text: str, parse: str) -> dict[str, Any]:
    """Run py-cpuinfo's parser `parse` with DataSource.`method` returning `text`."""
    mod = getattr(cpuinfo_mod, "cpuinfo", cpuinfo_mod)  # the package or its inner module
    data_source = mod.DataSource
    parser = getattr(mod, parse)
    with _DATA_SOURCE_LOCK:
        saved = {name: data_source.__dict__[name] for name in (method, "has_proc_cpuinfo", "has_sysctl")}
        try:
            setattr(data_source, method, staticmethod(lambda: (0, text)))
            data_source.has_proc_cpuinfo = staticmethod(lambda: True)
            data_source.has_sysctl = staticmethod(lambda: True)
            return parser() or {}
        finally:
            for name, value in saved.items():
                setattr(data_source, name, value)


def cpuinfo_from_proc(cpuinfo_mod: Any, text: str) -> dict[str, Any]:
    """py-cpuinfo's reading of a /proc/cpuinfo text."""
    return _with_source(cpuinfo_mod, "cat_proc_cpuinfo", text, "_get_cpu_info_from_proc_cpuinfo")


def cpuinfo_from_sysctl(cpuinfo_mod: Any, text: str) -> dict[str, Any]:
    """py-cpuinfo's reading of `sysctl machdep.cpu hw...` output (macOS)."""
    return _with_source(cpuinfo_mod, "sysctl_machdep_cpu_hw_cpufrequency", text, "_get_cpu_info_from_sysctl")


def arm_core_name(proc_cpuinfo: str) -> str | None:
    """Core name from the first processor block's implementer and part.

    CPU implementer	: 0x41
    CPU part	: 0xd40
    """
    implementer = re.search(r"^CPU implementer\s*:\s*(0x[0-9a-fA-F]+)", proc_cpuinfo, re.M)
    part = re.search(r"^CPU part\s*:\s*(0x[0-9a-fA-F]+)", proc_cpuinfo, re.M)
    if not implementer or not part:
        return None
    return ARM_PARTS.get((int(implementer.group(1), 16), int(part.group(1), 16)))


def normalise_flags(flags: Any) -> tuple[str, ...]:
    if not flags:
        return ()
    return tuple(sorted({X86_FLAG_ALIASES.get(f.lower(), f.lower()) for f in flags}))


def parse_meminfo_mb(text: str) -> int | None:
    """MemTotal from /proc/meminfo, in MiB.  `MemTotal:       24684096 kB`"""
    m = re.search(r"^MemTotal:\s*(\d+)\s*kB", text, re.M)
    return int(m.group(1)) // 1024 if m else None


def parse_cgroup_cpu_max(text: str) -> int | None:
    """CPUs a cgroup v2 quota allows (`200000 100000` -> 2); None when unlimited (`max 100000`)."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return max(1, math.ceil(quota / period)) if period > 0 else None


def usable_cores(system: System) -> Found[int | None]:
    cores = system.available_cpus
    limit_text = system.read_text("/sys/fs/cgroup/cpu.max") if system.system == "linux" else None
    limit = parse_cgroup_cpu_max(limit_text) if limit_text else None
    if limit is not None and (cores is None or limit < cores):
        return Found(limit, (f"cpu: the cgroup CPU quota allows {limit} of {cores} CPUs; using {limit}",))
    return Found(cores)


def _windows_memory_mb() -> int | None:
    import ctypes

    class MemoryStatusEx(ctypes.Structure):
        _fields_ = [
            ("dwLength", ctypes.c_ulong),
            ("dwMemoryLoad", ctypes.c_ulong),
            ("ullTotalPhys", ctypes.c_ulonglong),
            ("ullAvailPhys", ctypes.c_ulonglong),
            ("ullTotalPageFile", ctypes.c_ulonglong),
            ("ullAvailPageFile", ctypes.c_ulonglong),
            ("ullTotalVirtual", ctypes.c_ulonglong),
            ("ullAvailVirtual", ctypes.c_ulonglong),
            ("sullAvailExtendedVirtual", ctypes.c_ulonglong),
        ]

    status = MemoryStatusEx()
    status.dwLength = ctypes.sizeof(MemoryStatusEx)
    if not ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
        return None
    total: int = status.ullTotalPhys
    return total // (1024 * 1024)


def _read_cpuinfo(cpuinfo_mod: Any, private_reader: Any, notes: list[str]) -> dict[str, Any]:
    """py-cpuinfo through a per-source parser, or its public (slow) API when that parser is gone."""
    try:
        info: dict[str, Any] = private_reader()
        return info
    except (AttributeError, KeyError):
        notes.append(
            "cpu: py-cpuinfo's per-source parsers are missing (not 9.0.0?); used its slow get_cpu_info()"
        )
        return _public_cpuinfo(cpuinfo_mod, notes)
    except Exception as e:
        notes.append(f"cpu: py-cpuinfo failed ({type(e).__name__}: {e})")
        return {}


def _public_cpuinfo(cpuinfo_mod: Any, notes: list[str]) -> dict[str, Any]:
    try:
        return cpuinfo_mod.get_cpu_info() or {}
    except Exception as e:
        notes.append(f"cpu: py-cpuinfo failed ({type(e).__name__}: {e})")
        return {}


def probe_cpu(system: System, sysctl_text: str | None) -> Found[tuple[CPUInfo, int | None]]:
    """CPU and memory. `sysctl_text` is macOS's `sysctl hw machdep.cpu` output, read once by the caller."""
    notes: list[str] = []
    cpuinfo_mod = system.load_cpuinfo()
    info: dict[str, Any] = {}
    brand: str | None = None
    flags: tuple[str, ...] = ()
    memory: int | None = None

    if cpuinfo_mod is None:
        notes.append("cpu: py-cpuinfo is not installed; CPU flags unknown")
    if system.system == "linux":
        text = system.read_text("/proc/cpuinfo")
        meminfo = system.read_text("/proc/meminfo")
        memory = parse_meminfo_mb(meminfo) if meminfo else None
        if text is None:
            notes.append("cpu: /proc/cpuinfo is not readable; CPU brand and flags unknown")
        else:
            if cpuinfo_mod is not None:
                info = _read_cpuinfo(cpuinfo_mod, lambda: cpuinfo_from_proc(cpuinfo_mod, text), notes)
            brand = info.get("brand_raw") or arm_core_name(text)
    elif system.system == "darwin":
        sysctl = apple.parse_sysctl(sysctl_text or "")
        memory = apple.memory_mb(sysctl)
        if cpuinfo_mod is not None and sysctl_text:
            info = _read_cpuinfo(cpuinfo_mod, lambda: cpuinfo_from_sysctl(cpuinfo_mod, sysctl_text), notes)
        brand = info.get("brand_raw") or sysctl.get("machdep.cpu.brand_string")
        if apple.is_apple_silicon(system.machine, sysctl):
            flags = apple.arm_flags(sysctl)
    elif cpuinfo_mod is not None:
        # Windows and the rest: the public API is the only one py-cpuinfo offers there.
        info = _public_cpuinfo(cpuinfo_mod, notes)
        brand = info.get("brand_raw")

    flags = flags or normalise_flags(info.get("flags"))
    if memory is None and system.is_windows:
        try:
            memory = _windows_memory_mb()
        except Exception as e:
            notes.append(f"memory: GlobalMemoryStatusEx failed ({e})")
    if memory is None:
        notes.append("memory: total RAM unknown")
    cores = usable_cores(system)
    notes.extend(cores.notes)
    return Found((CPUInfo(brand=brand, cores=cores.value, flags=flags), memory), tuple(notes))
