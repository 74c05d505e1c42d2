"""Pure parsers for what ROCm and the amdgpu kernel driver say. Each one shows a sample it reads."""

from __future__ import annotations

import re
from typing import NamedTuple

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def gfx_name(major: int, minor: int, stepping: int) -> str:
    """LLVM's target name: minor and stepping are one hex digit each (9, 0, 10 -> gfx90a)."""
    return f"gfx{major}{minor:x}{stepping:x}"


def gfx_from_target_version(value: int) -> str | None:
    """KFD's gfx_target_version, major*10000 + minor*100 + stepping: 90010 -> gfx90a,
    90402 -> gfx942, 110001 -> gfx1101. 0 (a CPU node) -> None."""
    if value <= 0:
        return None
    return gfx_name(value // 10000, (value // 100) % 100, value % 100)


def normalise_gfx(raw: str) -> str | None:
    """A gfx target as people and tools write it -> LLVM's spelling, or None if it is not one.

    rocm-smi prints the KFD number's parts in decimal with a two-digit stepping, so gfx90a
    comes out as "gfx9010" and gfx1101 as "gfx11001"; those are mapped back here.
    rocm_agent_enumerator's "gfx000" is the CPU agent, not a GPU.
    """
    s = raw.strip().lower()
    m = re.fullmatch(r"gfx([0-9a-f]+)", s)
    if not m or s == "gfx000":
        return None
    digits = m.group(1)
    if digits.isdigit():
        major_len = 2 if digits[:2] in ("10", "11", "12") else 1
        if len(digits) == major_len + 3:  # rocm-smi's decimal form
            major, minor, stepping = (
                int(digits[:major_len]),
                int(digits[major_len]),
                int(digits[major_len + 1 :]),
            )
            return gfx_name(major, minor, stepping) if stepping < 16 else None
    return s if 3 <= len(digits) <= 4 else None


def parse_kfd_properties(text: str) -> dict[str, int]:
    """/sys/class/kfd/kfd/topology/nodes/N/properties: `name value` lines of integers.

    simd_count 416
    gfx_target_version 90010
    vendor_id 4098
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


class KfdGpu(NamedTuple):
    node: int
    gfx: str | None  # None on kernels before gfx_target_version was added (~4.19)
    device_id: int | None
    memory_mb: int | None


def kfd_gpu(node: int, properties: dict[str, int]) -> KfdGpu | None:
    """A GPU node, or None for a CPU node (no SIMDs)."""
    if properties.get("simd_count", 0) == 0:
        return None
    gfx = gfx_from_target_version(properties.get("gfx_target_version", 0))
    local = properties.get("local_mem_size", 0)
    return KfdGpu(node, gfx, properties.get("device_id"), local // (1024 * 1024) if local > 0 else None)


def parse_rocm_agent_enumerator(text: str) -> list[str]:
    """One target per agent; older ROCm lists the CPU first as gfx000.

    gfx000
    gfx803
    gfx902
    """
    return [g for line in text.splitlines() if (g := normalise_gfx(line))]


class RocminfoAgent(NamedTuple):
    name: str  # marketing name
    gfx: str | None
    node: int | None


def parse_rocminfo(text: str) -> list[RocminfoAgent]:
    """GPU agents from rocminfo. Agent fields are indented two spaces; the ISA list under an
    agent repeats `Name:` deeper, so only two-space `Name:` lines start an agent.

        *******
        Agent 3
        *******
          Name:                    gfx1100
          Marketing Name:          Radeon RX 7900 XTX
          Node:                    2
          Device Type:             GPU
    """
    agents: list[dict[str, str]] = []
    for raw in ANSI_ESCAPE.sub("", text).splitlines():
        m = re.match(r"^  (\S[^:]*):\s*(.*?)\s*$", raw)
        if not m:
            continue
        key, value = m.group(1).strip(), m.group(2)
        if key == "Name":
            agents.append({})
        if agents:
            agents[-1].setdefault(key, value)
    out = []
    for a in agents:
        if a.get("Device Type") != "GPU":
            continue
        node = a.get("Node", "")
        out.append(
            RocminfoAgent(
                name=a.get("Marketing Name") or a.get("Name", "AMD GPU"),
                gfx=normalise_gfx(a.get("Name", "")),
                node=int(node) if node.isdigit() else None,
            )
        )
    return out


def parse_hip_version(text: str) -> str | None:
    """HIP version from `hipconfig --version` (`6.2.41133-dd7f95766`) or the full hipconfig /
    `hipcc --version` output (`HIP version: 6.2.41133-dd7f95766`); the build hash is dropped."""
    m = re.search(r"HIP version\s*:\s*(\d+\.\d+(?:\.\d+)?)", text) or re.match(
        r"\s*(\d+\.\d+(?:\.\d+)?)", text
    )
    return m.group(1) if m else None


def parse_rocm_info_version(text: str) -> str | None:
    """/opt/rocm/.info/version, believed to read like `6.2.0-66` (no captured sample found)."""
    m = re.match(r"\s*(\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else None


def rocm_version_from_hip(hip_version: str) -> str:
    """HIP 6.2.41133 ships with ROCm 6.2: the third number is a build, not ROCm's patch level."""
    return ".".join(hip_version.split(".")[:2])
