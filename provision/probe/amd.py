"""AMD GPUs (gfx targets) and the installed ROCm version. Order: see provision/probe/host.py."""

from __future__ import annotations

import re
from typing import NamedTuple

from provision.errors import UserError
from provision.probe import amd_parse as parse
from provision.probe.found import Found
from provision.probe.pci import VENDOR_AMD, PciDisplay
from provision.probe.system import System
from provision.profile import GPU, RocmInfo

ENV_AMD_GPU_ARCHITECTURE = "XINFER_SETUP_AMD_GPU_ARCHITECTURE"
KFD_NODES = "/sys/class/kfd/kfd/topology/nodes"
ROCM_TOOL_TIMEOUT_S = 15.0


class AmdFindings(NamedTuple):
    gpus: tuple[GPU, ...]
    rocm: RocmInfo | None


def gpus_from_env(value: str) -> tuple[GPU, ...]:
    """XINFER_SETUP_AMD_GPU_ARCHITECTURE=gfx942 (or gfx942,gfx90a): one GPU per target."""
    gpus: list[GPU] = []
    for raw in (v for v in re.split(r"[,\s]+", value) if v):
        gfx = parse.normalise_gfx(raw)
        if gfx is None:
            raise UserError(
                f"{ENV_AMD_GPU_ARCHITECTURE}: {raw!r} is not an AMD GPU target "
                "(expected e.g. gfx942 or gfx90a)"
            )
        gpus.append(GPU("amd", f"AMD GPU ({gfx})", gfx=gfx, index=len(gpus)))
    if not gpus:
        raise UserError(f"{ENV_AMD_GPU_ARCHITECTURE} is set but empty")
    return tuple(gpus)


def read_kfd(system: System) -> list[parse.KfdGpu] | None:
    """GPU nodes of the KFD topology, by node number; None when there is no KFD (no amdgpu driver)."""
    base = system.path(KFD_NODES)
    try:
        nodes = [p for p in base.iterdir() if p.name.isdigit()]
    except OSError:
        return None
    gpus = []
    for node in sorted(nodes, key=lambda p: int(p.name)):
        try:
            properties = parse.parse_kfd_properties((node / "properties").read_text())
        except OSError:
            continue
        gpu = parse.kfd_gpu(int(node.name), properties)
        if gpu is not None:
            gpus.append(gpu)
    return gpus


def _run_tool(system: System, name: str, notes: list[str]) -> str | None:
    tool = system.trusted_which(name)
    if tool is None:
        return None
    try:
        result = system.run([str(tool)], ROCM_TOOL_TIMEOUT_S)
    except Exception as e:  # OSError, TimeoutExpired
        notes.append(f"amd: {name} failed ({type(e).__name__}: {e})")
        return None
    if not result.ok:
        notes.append(f"amd: {name} exited {result.returncode}")
        return None
    return result.stdout


def rocm_version(system: System) -> str | None:
    for root in (system.env.get("ROCM_PATH"), "/opt/rocm"):
        if root:
            text = system.read_text(f"{root.rstrip('/')}/.info/version")
            if text and (version := parse.parse_rocm_info_version(text)):
                return version
    return None


def probe_amd(system: System, pci: list[PciDisplay]) -> Found[AmdFindings]:
    rocm = RocmInfo(v) if (v := rocm_version(system)) else None
    override = system.env.get(ENV_AMD_GPU_ARCHITECTURE)
    if override is not None:
        return Found(
            AmdFindings(gpus_from_env(override), rocm), (f"amd: GPU targets from {ENV_AMD_GPU_ARCHITECTURE}",)
        )
    if system.system != "linux":
        return Found(AmdFindings((), rocm))

    notes: list[str] = []
    kfd = read_kfd(system)
    agents: list[parse.RocminfoAgent] = []
    if kfd is None or kfd:
        # rocminfo adds the marketing names (matched to KFD nodes by node number), and is the
        # only source left when /sys/class/kfd is not visible (a container without it).
        text = _run_tool(system, "rocminfo", notes)
        agents = parse.parse_rocminfo(text) if text else []
    by_node = {a.node: a for a in agents if a.node is not None}

    gpus: list[GPU] = []
    if kfd:
        missing_gfx = [g for g in kfd if g.gfx is None and not (by_node.get(g.node) and by_node[g.node].gfx)]
        enumerated: list[str] = []
        if missing_gfx:
            # Kernels before gfx_target_version: ask ROCm. Its list follows node order.
            text = _run_tool(system, "rocm_agent_enumerator", notes)
            enumerated = parse.parse_rocm_agent_enumerator(text) if text else []
        for i, node in enumerate(kfd):
            agent = by_node.get(node.node)
            gfx = (
                node.gfx or (agent.gfx if agent else None) or (enumerated[i] if i < len(enumerated) else None)
            )
            name = agent.name if agent else f"AMD GPU ({gfx or 'gfx unknown'})"
            gpus.append(GPU("amd", name, memory_mb=node.memory_mb, gfx=gfx, index=i))
            if gfx is None:
                notes.append(
                    f"amd: GPU at KFD node {node.node} has no gfx target (old kernel, no ROCm tools)"
                )
    elif agents:
        gpus = [GPU("amd", a.name, gfx=a.gfx, index=i) for i, a in enumerate(agents)]

    if not gpus and any(d.vendor == VENDOR_AMD for d in pci):
        notes.append("amd: AMD display controller on the PCI bus, but no amdgpu compute (KFD) driver answers")
    return Found(AmdFindings(tuple(gpus), rocm), tuple(notes))
