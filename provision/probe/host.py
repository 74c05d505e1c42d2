"""probe_host(): the whole profile, and the one place the detection order is written down.

Sources, in the order they are consulted (each failure becomes a note, never a crash):

OS        platform.system/machine/release; libc from os.confstr(CS_GNU_LIBC_VERSION),
          else musl's loader (/lib/ld-musl-*.so.1) run for its version.
CPU       Linux: /proc/cpuinfo through py-cpuinfo's /proc/cpuinfo parser (aarch64 core
          name from CPU implementer/part); macOS: one `sysctl hw machdep.cpu` through its
          sysctl parser; elsewhere py-cpuinfo's get_cpu_info(). Cores: sched_getaffinity,
          capped by a cgroup v2 cpu.max quota. Memory: /proc/meminfo, hw.memsize, or
          GlobalMemoryStatusEx.
GPU switch  XINFER_SETUP_NO_GPU=1 skips every GPU source below.
PCI       /sys/bus/pci/devices/*/{class,vendor,device}: display and 3D controllers, so a
          GPU with no working driver is still seen.
NVIDIA    1. XINFER_SETUP_CUDA_DRIVER_VERSION (a driver version, as uv's
             UV_CUDA_DRIVER_VERSION) replaces the driver found below, keeping its GPUs;
             XINFER_SETUP_CUDA_ARCH=8.0,9.0 replaces the GPUs; both: nothing is probed.
          2. NVML (pynvml), tried when there is evidence of a driver (an NVIDIA PCI
             device, /proc/driver/nvidia, /dev/nvidiactl, WSL's /dev/dxg, a trusted
             nvidia-smi; always on Windows).
          3. nvidia-smi from trusted system directories only: the CSV query and the
             default table (for the CUDA version), run side by side.
          4. /sys/module/nvidia/version, then /proc/driver/nvidia/version: driver only.
          5. NVIDIA PCI devices that none of the above explained: listed, name unknown.
AMD       1. XINFER_SETUP_AMD_GPU_ARCHITECTURE (gfx942[,gfx90a...]).
          2. KFD topology /sys/class/kfd/kfd/topology/nodes/*/properties (gfx target,
             memory; CPU nodes skipped), with rocminfo's marketing names by node.
          3. rocm_agent_enumerator, for kernels whose KFD has no gfx_target_version.
          4. rocminfo alone, when no KFD is visible.
          ROCm version: $ROCM_PATH or /opt/rocm /.info/version, else hipcc's HIP version.
Platform  Rosetta: `sysctl sysctl.proc_translated` (macOS). Jetson: /etc/nv_tegra_release,
          else a `-tegra` kernel release, else /sys/module/nvgpu. WSL2: /usr/lib/wsl/lib.
          The NVML error (not "no driver") and vGPU/MIG mode come from the NVIDIA source.
Apple     Darwin on Apple Silicon (arm64, or hw.optional.arm64 under Rosetta): the
          integrated GPU, named by machdep.cpu.brand_string. Intel Macs list none.
Toolchain cmake, cc ($CC, cc, gcc, clang), nvcc (+ $CUDA_HOME/bin, /usr/local/cuda/bin),
          hipcc (+ /opt/rocm/bin), ninja, ccache: `--version`, all at once, 5 s each.
          cuBLAS: cublas_v2.h and libcublas in nvcc's toolkit directory.

Everything that waits (commands, NVML) runs side by side in daemon threads.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from provision.errors import UserError
from provision.probe import amd as amd_source
from provision.probe import apple
from provision.probe import nvidia as nvidia_source
from provision.probe.amd_parse import rocm_version_from_hip
from provision.probe.background import Background
from provision.probe.cpu import probe_cpu
from provision.probe.found import Found
from provision.probe.osinfo import os_info
from provision.probe.pci import display_controllers
from provision.probe.platform import probe_platform
from provision.probe.system import System
from provision.probe.toolchain import probe_toolchain
from provision.profile import GPU, GPU_VIRTUALIZATION, CPUInfo, HostProfile, PythonInfo, RocmInfo, Toolchain

ENV_NO_GPU = "XINFER_SETUP_NO_GPU"

# How long each source may take before the probe goes on without it. Commands have
# their own, shorter timeouts; these catch what cannot be timed out (a hung NVML call).
DEADLINE_S = {"cpu": 20.0, "toolchain": 15.0, "nvidia": 40.0, "amd": 40.0}

T = TypeVar("T")


def _no_gpu(system: System) -> bool:
    return system.env.get(ENV_NO_GPU, "").strip().lower() in ("1", "true", "yes", "on")


def _collect(task: Background[Found[T]], fallback: T, notes: list[str]) -> T:
    try:
        found = task.result(DEADLINE_S[task.name])
    except UserError:
        raise  # a bad override in the environment is the user's to fix, not a note
    except Exception as e:
        notes.append(f"{task.name}: probe failed ({type(e).__name__}: {e})")
        return fallback
    notes.extend(found.notes)
    return found.value


def _darwin_sysctl(system: System, notes: list[str]) -> str | None:
    sysctl = system.which("sysctl", ("/usr/sbin", "/sbin"))
    if sysctl is None:
        notes.append("cpu: sysctl not found")
        return None
    try:
        result = system.run([str(sysctl), "hw", "machdep.cpu"], 5.0)
    except Exception as e:
        notes.append(f"cpu: sysctl failed ({e})")
        return None
    return result.stdout if result.ok else None


def probe_host(system: System | None = None) -> HostProfile:
    """Profile this machine (or the `system` a test describes). Raises UserError only for a
    malformed XINFER_SETUP_* override; every other failure is a note in the profile."""
    system = system or System.current()
    notes: list[str] = []
    no_gpu = _no_gpu(system)
    sysctl_text = _darwin_sysctl(system, notes) if system.system == "darwin" else None
    pci = [] if no_gpu or system.system != "linux" else display_controllers(system)

    # The tools' subprocesses first: they run on other cores while this process imports py-cpuinfo.
    tool_task = Background(lambda: probe_toolchain(system), "toolchain")
    cpu_task = Background(lambda: probe_cpu(system, sysctl_text), "cpu")
    nvidia_task = amd_task = None
    if not no_gpu:
        nvidia_task = Background(lambda: nvidia_source.probe_nvidia(system, pci), "nvidia")
        amd_task = Background(lambda: amd_source.probe_amd(system, pci), "amd")

    os_found = os_info(system)
    notes.extend(os_found.notes)
    platform_found = probe_platform(system)
    notes.extend(platform_found.notes)
    cpu, memory_mb = _collect(cpu_task, (CPUInfo(None, system.available_cpus), None), notes)
    nvidia = _collect(nvidia_task, nvidia_source.NOTHING, notes) if nvidia_task else nvidia_source.NOTHING
    amd: Any = _collect(amd_task, amd_source.AmdFindings((), None), notes) if amd_task else None
    toolchain = _collect(tool_task, Toolchain(), notes)

    gpus = list(nvidia.gpus)
    rocm: RocmInfo | None = None
    if amd is not None:
        gpus.extend(amd.gpus)
        rocm = amd.rocm
        if rocm is None and toolchain.hipcc:
            rocm = RocmInfo(rocm_version_from_hip(toolchain.hipcc))
    if not no_gpu and sysctl_text is not None:
        gpu = apple.apple_gpu(system.machine, apple.parse_sysctl(sysctl_text))
        if gpu is not None:
            gpus.append(gpu)
    if no_gpu:
        notes.append(f"gpu: {ENV_NO_GPU} is set; no GPU source was consulted")

    return HostProfile(
        os=os_found.value,
        python=PythonInfo(system.python_version, system.python_implementation),
        cpu=cpu,
        memory_mb=memory_mb,
        gpus=tuple(gpus),
        nvidia=nvidia.driver,
        rocm=rocm,
        toolchain=toolchain,
        notes=tuple(notes),
        platform=dataclasses.replace(
            platform_found.value,
            nvml_error=nvidia.nvml_error,
            gpu_virtualization=tuple(v for v in nvidia.virtualization if v in GPU_VIRTUALIZATION),
        ),
    )


def probe_host_light(system: System | None = None) -> HostProfile:
    """What runtime_env() needs, with no command run: OS, Jetson/WSL2, AMD gfx targets from the
    KFD topology, and whether an NVIDIA driver is loaded. For processes started without a
    profile at hand (engine servers); the full profile is probe_host()'s."""
    system = system or System.current()
    platform_found = probe_platform(system)
    gpus: list[GPU] = []
    if not _no_gpu(system) and system.system == "linux":
        for g in amd_source.read_kfd(system) or []:
            gpus.append(GPU("amd", f"AMD GPU (KFD node {g.node})", g.memory_mb, gfx=g.gfx))
        if system.path("/dev/dxg").exists() or system.path("/proc/driver/nvidia").exists():
            gpus.append(GPU("nvidia", "NVIDIA GPU"))
    return HostProfile(
        os=os_info(system).value,
        python=PythonInfo(system.python_version, system.python_implementation),
        cpu=CPUInfo(None, system.available_cpus),
        memory_mb=None,
        gpus=tuple(gpus),
        nvidia=None,
        rocm=None,
        toolchain=Toolchain(),
        platform=platform_found.value,
    )
