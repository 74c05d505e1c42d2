"""macOS: one `sysctl hw machdep.cpu` read, and the Apple Silicon GPU it implies.

A sample of what is parsed (sysctl-hw-machdep__macos15-apple-m3-max.txt):

    hw.ncpu: 14
    hw.memsize: 38654705664
    hw.optional.arm64: 1
    hw.optional.arm.FEAT_BF16: 1
    machdep.cpu.brand_string: Apple M3 Max
"""

from __future__ import annotations

from provision.probe.text import colon_pairs
from provision.profile import GPU

# sysctl's hw.optional keys -> the flag names Linux /proc/cpuinfo (and so py-cpuinfo) uses
# on aarch64, so a plan reads the same word on a Graviton and on a Mac.
ARM_SYSCTL_FLAGS = {
    "hw.optional.neon": "asimd",
    "hw.optional.AdvSIMD": "asimd",
    "hw.optional.neon_fp16": "asimdhp",
    "hw.optional.arm.FEAT_FP16": "fphp",
    "hw.optional.arm.FEAT_DotProd": "asimddp",
    "hw.optional.arm.FEAT_BF16": "bf16",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_FHM": "asimdfhm",
    "hw.optional.arm.FEAT_SME": "sme",
    "hw.optional.arm.FEAT_SME2": "sme2",
}


def parse_sysctl(text: str) -> dict[str, str]:
    """`key: value` lines -> dict. Values keep their inner spaces."""
    return colon_pairs(text)


def is_apple_silicon(machine: str, sysctl: dict[str, str]) -> bool:
    # hw.optional.arm64 also says yes for an x86_64 Python running under Rosetta 2.
    return machine.lower() == "arm64" or sysctl.get("hw.optional.arm64") == "1"


def arm_flags(sysctl: dict[str, str]) -> tuple[str, ...]:
    flags = {flag for key, flag in ARM_SYSCTL_FLAGS.items() if sysctl.get(key) == "1"}
    if flags:
        flags.add("neon")
    return tuple(sorted(flags))


def memory_mb(sysctl: dict[str, str]) -> int | None:
    raw = sysctl.get("hw.memsize")
    return int(raw) // (1024 * 1024) if raw and raw.isdigit() else None


def apple_gpu(machine: str, sysctl: dict[str, str]) -> GPU | None:
    """The integrated GPU of an Apple Silicon Mac (Metal); None on an Intel Mac."""
    if not is_apple_silicon(machine, sysctl):
        return None
    brand = sysctl.get("machdep.cpu.brand_string") or "Apple Silicon"
    # Unified memory: the GPU can address (most of) the machine's RAM.
    return GPU(vendor="apple", name=brand, memory_mb=memory_mb(sysctl))
