"""NVIDIA GPUs and driver: NVML first, then nvidia-smi, then the kernel module's files.

The order is written down in provision/probe/host.py. NVML is the driver's own library
and gives every field in one in-process call; nvidia-smi is a front end to the same
library (so it helps only when the Python bindings are missing or broken, or on a box
where the library is not on the loader path); the kernel module's version files answer
even when user space is broken ("Driver/library version mismatch"), but say nothing
about GPUs or CUDA.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, NamedTuple

from provision.errors import UserError
from provision.probe import nvidia_parse as parse
from provision.probe.background import Background
from provision.probe.found import Found
from provision.probe.pci import VENDOR_NVIDIA, PciDisplay
from provision.probe.system import System
from provision.profile import GPU, NvidiaDriver

ENV_CUDA_DRIVER_VERSION = "XINFER_SETUP_CUDA_DRIVER_VERSION"
ENV_CUDA_ARCH = "XINFER_SETUP_CUDA_ARCH"
SMI_TIMEOUT_S = 15.0
MIB = 1024 * 1024


class NvidiaFindings(NamedTuple):
    gpus: tuple[GPU, ...]
    driver: NvidiaDriver | None
    # NVML failed with the driver present ("Unknown Error" in a container): not "no GPU".
    nvml_error: str | None = None
    virtualization: tuple[str, ...] = ()  # "mig", "vgpu", "passthrough"


# NVML errors that do mean "no usable driver here"; any other is reported as an NVML error.
NO_DRIVER_ERRORS = ("Driver Not Loaded", "Library Not Found", "not installed")

# nvmlDeviceGetVirtualizationMode: 0 none, 1 pass-through, 2 vGPU guest, 3 host vGPU, 4 host vSGA.
VIRTUALIZATION_MODES = {1: "passthrough", 2: "vgpu"}


NOTHING = NvidiaFindings((), None)


def driver_from_env(value: str) -> NvidiaDriver:
    """XINFER_SETUP_CUDA_DRIVER_VERSION, a driver version as uv's UV_CUDA_DRIVER_VERSION takes it."""
    value = value.strip()
    if not re.fullmatch(r"\d+(\.\d+)+", value) or parse.is_l4t_release(value):
        raise UserError(
            f"{ENV_CUDA_DRIVER_VERSION}={value!r} is not an NVIDIA driver version (expected e.g. 580.65.06)"
        )
    return NvidiaDriver(driver_version=value, cuda_driver_version=None, source="env")


def gpus_from_arch_env(value: str) -> tuple[GPU, ...]:
    """XINFER_SETUP_CUDA_ARCH=8.0,9.0 (also sm_90 or 90): one GPU per compute capability, so a
    GPU-less container build can plan for the GPUs it will run on."""
    gpus = []
    for i, item in enumerate(v.strip() for v in value.split(",") if v.strip()):
        m = re.fullmatch(r"(?:sm_?)?(\d{1,2})\.?(\d)", item, re.I)
        if not m or not 3 <= int(m.group(1)) <= 15:
            raise UserError(
                f"{ENV_CUDA_ARCH}={value!r}: {item!r} is not a CUDA compute capability "
                "(expected e.g. 8.0,9.0)"
            )
        cc = f"{int(m.group(1))}.{m.group(2)}"
        gpus.append(
            GPU("nvidia", f"NVIDIA GPU with compute capability {cc} ({ENV_CUDA_ARCH})", None, cc, index=i)
        )
    if not gpus:
        raise UserError(f"{ENV_CUDA_ARCH} is set but names no compute capability (expected e.g. 8.0,9.0)")
    return tuple(gpus)


def _text(value: Any) -> str:
    # pynvml before 11.5 returned bytes
    return value.decode() if isinstance(value, bytes) else str(value)


def read_nvml(nvml: Any) -> Found[NvidiaFindings]:
    """Everything from NVML. Raises nvml.NVMLError when the library or driver does not answer."""
    notes: list[str] = []
    nvml.nvmlInit()
    try:
        driver_version = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = None
        try:
            cuda = parse.cuda_version_from_nvml(int(nvml.nvmlSystemGetCudaDriverVersion()))
        except nvml.NVMLError as e:
            notes.append(f"nvidia: NVML did not report the CUDA version ({e})")
        gpus = []
        virt: list[str] = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = _text(nvml.nvmlDeviceGetName(handle))
            memory = cc = None
            try:
                memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // MIB
            except nvml.NVMLError as e:
                notes.append(f"nvidia: GPU {index} memory not reported by NVML ({e})")
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                cc = f"{major}.{minor}"
            except nvml.NVMLError as e:
                notes.append(f"nvidia: GPU {index} compute capability not reported by NVML ({e})")
            try:
                if nvml.nvmlDeviceGetMigMode(handle)[0] == 1:
                    notes.append(f"nvidia: GPU {index} ({name}) has MIG enabled; engines see its MIG slices")
                    virt.append("mig")
            except nvml.NVMLError:
                pass  # "Not Supported" on GPUs without MIG
            mode = _virtualization_mode(nvml, handle)
            if mode:
                virt.append(mode)
                notes.append(f"nvidia: GPU {index} ({name}) is a {mode} GPU (NVML virtualization mode)")
            gpus.append(GPU("nvidia", name, memory_mb=memory, compute_capability=cc, index=index))
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    driver = NvidiaDriver(driver_version, cuda, "nvml")
    return Found(NvidiaFindings(tuple(gpus), driver, None, tuple(dict.fromkeys(virt))), tuple(notes))


def _virtualization_mode(nvml: Any, handle: Any) -> str | None:
    getter = getattr(nvml, "nvmlDeviceGetVirtualizationMode", None)
    if getter is None:
        return None
    try:
        return VIRTUALIZATION_MODES.get(int(getter(handle)))
    except Exception:  # "Not Supported" on consumer GPUs and old drivers
        return None


def is_nvml_error(message: str) -> bool:
    """An NVML failure that is not simply "no driver": Unknown Error, No Permission, GPU is lost,
    Driver/library version mismatch. The GPUs are very likely there; say so, never "no GPU"."""
    return bool(message) and not any(m.lower() in message.lower() for m in NO_DRIVER_ERRORS)


def read_proc_gpus(system: System) -> tuple[GPU, ...]:
    """GPUs the kernel module lists in /proc/driver/nvidia/gpus/<bus>/information (their names
    only), for when NVML and nvidia-smi fail but the driver is loaded."""
    base = system.path("/proc/driver/nvidia/gpus")
    try:
        dirs = sorted(p for p in base.iterdir() if p.is_dir())
    except OSError:
        return ()
    gpus = []
    for i, d in enumerate(dirs):
        try:
            info = parse.parse_gpu_information((d / "information").read_text(errors="replace"))
        except OSError:
            continue
        name = info.get("Model") or f"NVIDIA GPU (PCI {d.name}; name unknown)"
        minor = info.get("Device Minor", "")
        gpus.append(GPU("nvidia", name, index=int(minor) if minor.isdigit() else i))
    return tuple(gpus)


def read_nvidia_smi(system: System, smi: str) -> Found[NvidiaFindings]:
    """Two nvidia-smi calls side by side: the CSV query (full names, compute capability) and the
    default table (its header is the one place every driver from 450 to 610 prints the CUDA version)."""
    fields = ",".join(parse.QUERY_FIELDS)
    query = Background(
        lambda: system.run([smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"], SMI_TIMEOUT_S),
        "nvidia-smi-query",
    )
    table = system.run([smi], SMI_TIMEOUT_S)
    queried = query.result(SMI_TIMEOUT_S + 5)
    notes: list[str] = []
    header = parse.parse_driver_header(table.stdout) if table.ok else parse.DriverHeader(None, None)
    if queried.ok:
        smi_gpus = parse.parse_query_gpu_csv(queried.stdout)
    elif table.ok:
        # Drivers before ~510 reject the compute_cap field; the table still lists the GPUs.
        smi_gpus = parse.parse_smi_table(table.stdout)
        notes.append(
            f"nvidia: `nvidia-smi --query-gpu` failed ({_first_line(queried)}); compute capability unknown"
        )
    else:
        raise RuntimeError(f"nvidia-smi failed: {_first_line(table)}")
    virt: tuple[str, ...] = ()
    if table.ok and "MIG devices:" in table.stdout:
        notes.append("nvidia: MIG is enabled on a GPU; engines see its MIG slices")
        virt = ("mig",)
    notes.extend(
        f"nvidia: GPU {g.index} name cut short by nvidia-smi: {g.name!r}"
        for g in smi_gpus
        if g.name_truncated
    )
    driver_version = header.driver_version or next(
        (g.driver_version for g in smi_gpus if g.driver_version), None
    )
    gpus = tuple(
        GPU("nvidia", g.name, memory_mb=g.memory_mb, compute_capability=g.compute_capability, index=g.index)
        for g in smi_gpus
    )
    driver = NvidiaDriver(driver_version, header.cuda_version, "nvidia-smi") if driver_version else None
    return Found(NvidiaFindings(gpus, driver, None, virt), tuple(notes))


def _first_line(result: Any) -> str:
    text = (result.stderr or result.stdout or "").strip()
    return text.splitlines()[0] if text else f"exit {result.returncode}"


def read_kernel_module(system: System) -> Found[NvidiaDriver | None]:
    """The loaded kernel module's version: /sys/module/nvidia/version, then /proc/driver/nvidia/version."""
    version = None
    text = system.read_text("/sys/module/nvidia/version")
    if text:
        version = parse.parse_sys_module_version(text)
    source = "sysfs"
    if version is None:
        text = system.read_text("/proc/driver/nvidia/version")
        version = parse.parse_proc_driver_version(text) if text else None
        source = "proc"
    if version is None:
        return Found(None)
    if parse.is_l4t_release(version):
        return Found(
            None, (f"nvidia: Jetson kernel module (L4T release {version}); not a desktop driver version",)
        )
    return Found(NvidiaDriver(version, None, source))


def driver_evidence(system: System, pci: list[PciDisplay], smi: str | None) -> bool:
    """Whether NVML is worth loading (importing pynvml alone costs ~40 ms)."""
    if system.system == "windows":
        return True
    if system.system != "linux":
        return False
    if smi or any(d.vendor == VENDOR_NVIDIA for d in pci):
        return True
    # Kernel module loaded, or WSL2's GPU paravirtualisation (no PCI device is visible there).
    return any(system.path(p).exists() for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg"))


def probe_nvidia(system: System, pci: list[PciDisplay]) -> Found[NvidiaFindings]:
    """The GPUs and driver, with the overrides applied on top of what is probed.

    XINFER_SETUP_CUDA_DRIVER_VERSION replaces the driver and keeps the probed GPUs;
    XINFER_SETUP_CUDA_ARCH replaces the GPUs. With both set nothing is probed (a container build).
    """
    driver_env, arch_env = system.env.get(ENV_CUDA_DRIVER_VERSION), system.env.get(ENV_CUDA_ARCH)
    driver = driver_from_env(driver_env) if driver_env else None
    arch_gpus = gpus_from_arch_env(arch_env) if arch_env else None
    if driver is not None and arch_gpus is not None:
        return Found(
            NvidiaFindings(arch_gpus, driver),
            (
                f"nvidia: driver {driver.driver_version} and GPUs from "
                f"{ENV_CUDA_DRIVER_VERSION}/{ENV_CUDA_ARCH}; nothing probed",
            ),
        )
    probed = _probe_nvidia(system, pci)
    notes = list(probed.notes)
    gpus, found_driver = probed.value.gpus, probed.value.driver
    if driver is not None:
        was = f" (probed: {found_driver.driver_version})" if found_driver else ""
        notes.append(f"nvidia: driver version {driver.driver_version} from {ENV_CUDA_DRIVER_VERSION}{was}")
        found_driver = driver
    if arch_gpus is not None:
        notes.append(f"nvidia: GPUs from {ENV_CUDA_ARCH} ({len(gpus)} probed GPU(s) set aside)")
        gpus = arch_gpus
    return Found(probed.value._replace(gpus=gpus, driver=found_driver), tuple(notes))


def _probe_nvidia(system: System, pci: list[PciDisplay]) -> Found[NvidiaFindings]:
    notes: list[str] = []
    smi = str(p) if (p := system.trusted_which("nvidia-smi")) else None
    found: NvidiaFindings | None = None
    nvml_error: str | None = None
    if driver_evidence(system, pci, smi):
        errors: list[str] = []
        found = _attempt("NVML", lambda: read_nvml(_require(system.load_nvml())), notes, errors)
        if errors and is_nvml_error(errors[0]):
            nvml_error = errors[0]
        if found is None and smi:
            smi_errors: list[str] = []
            found = _attempt("nvidia-smi", lambda: read_nvidia_smi(system, smi), notes, smi_errors, True)
            if nvml_error is None and smi_errors and parse.is_nvml_unknown_error(smi_errors[0]):
                nvml_error = "Unknown Error (from nvidia-smi)"
    if found is None or found.driver is None:
        module = read_kernel_module(system) if system.system == "linux" else Found(None)
        notes.extend(module.notes)
        if module.value is not None:
            found = NvidiaFindings(found.gpus if found else (), module.value)
    found = found or NOTHING
    if nvml_error is not None:
        if not found.gpus and system.system == "linux":
            found = found._replace(gpus=read_proc_gpus(system))
        notes.append(
            f"nvidia: NVML failed ({nvml_error}) with an NVIDIA driver present: this is an NVML error, "
            "not a host without a GPU (in a container: restart it, or check the NVIDIA container "
            "toolkit's device mounts)"
        )
        found = found._replace(nvml_error=nvml_error)
    on_bus = [d for d in pci if d.vendor == VENDOR_NVIDIA]
    if on_bus and not found.gpus:
        notes.append(
            f"nvidia: {len(on_bus)} NVIDIA GPU(s) on the PCI bus but no driver answers "
            "(install or load the NVIDIA driver to use them)"
        )
        found = NvidiaFindings(
            tuple(
                GPU("nvidia", f"NVIDIA GPU (PCI {d.address}, device 0x{d.device or 0:04x}; name unknown)")
                for d in on_bus
            ),
            found.driver,
        )
    if found.driver is not None and found.driver.cuda_driver_version is None:
        notes.append(
            f"nvidia: driver {found.driver.driver_version} found, but not the CUDA version it supports"
        )
    return Found(found, tuple(notes))


def _require(nvml: Any) -> Any:
    if nvml is None:
        raise RuntimeError("the pynvml module (nvidia-ml-py) is not installed")
    return nvml


def _attempt(
    source: str, read: Any, notes: list[str], errors: list[str] | None = None, any_error: bool = False
) -> NvidiaFindings | None:
    try:
        found: Found[NvidiaFindings] = read()
    except Exception as e:  # NVMLError_LibraryNotFound / DriverNotLoaded, a failing nvidia-smi, ...
        notes.append(f"nvidia: {source} did not answer ({e})")
        # RuntimeError: pynvml itself is missing, which says nothing about the GPUs.
        if errors is not None and (any_error or not isinstance(e, RuntimeError)):
            errors.append(str(e))
        return None
    notes.extend(found.notes)
    return found.value
