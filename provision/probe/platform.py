"""What kind of host this is, beyond OS and CPU: Rosetta, Jetson, WSL2.

Each source is read by a small pure parser that shows a sample of what it reads (the raw
samples are in tests/fixtures/raw); probe_platform() gathers them, one detector per kind.
The NVML error and vGPU/MIG mode come from the NVIDIA probe (provision/probe/nvidia.py).
"""

from __future__ import annotations

import re

from provision.probe.found import Found
from provision.probe.system import System
from provision.profile import PlatformInfo, Tegra

NV_TEGRA_RELEASE = "/etc/nv_tegra_release"
WSL_LIB_DIR = "/usr/lib/wsl/lib"


def parse_proc_translated(text: str) -> bool | None:
    """`sysctl sysctl.proc_translated` (sysctl-proc-translated__x86_64-python-under-rosetta.txt):

        sysctl.proc_translated: 1

    1: this process is translated by Rosetta 2; 0: native. Intel Macs and macOS before 11 have no
    such key (sysctl says "unknown oid"): not translated. Anything else: unknown (None)."""
    m = re.search(r"sysctl\.proc_translated:\s*([01])\b", text)
    if m:
        return m.group(1) == "1"
    if "unknown oid" in text:
        return False
    return None


def parse_nv_tegra_release(text: str) -> str | None:
    """The L4T release from /etc/nv_tegra_release (nv-tegra-release__jetson-l4t-r36.3.0-jetpack6.txt):

        # R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, DATE: ...

    -> "36.3.0"."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def is_tegra_kernel(release: str | None) -> bool:
    """Jetson kernels carry a -tegra suffix: 5.15.148-tegra (JetPack 6), 5.10.120-tegra (JetPack 5)."""
    return bool(release) and re.search(r"-tegra\b", release or "") is not None


def wsl_lib_dir_has_driver(names: list[str]) -> bool:
    """Whether a listing of /usr/lib/wsl/lib holds the Windows NVIDIA driver's libcuda.

    Without an NVIDIA driver on Windows it holds only the D3D12 layer
    (ls-usr-lib-wsl-lib__wsl2-no-nvidia-driver.txt): `libd3d12.so  libd3d12core.so  libdxcore.so`."""
    return any(n.startswith("libcuda.so") for n in names)


def detect_rosetta(system: System) -> Found[bool | None]:
    if system.system != "darwin":
        return Found(None)
    sysctl = system.which("sysctl", ("/usr/sbin", "/sbin"))
    if sysctl is None:
        return Found(None)
    try:
        result = system.run([str(sysctl), "sysctl.proc_translated"], 5.0)
    except Exception as e:
        return Found(None, (f"platform: sysctl.proc_translated not read ({e})",))
    translated = parse_proc_translated(result.stdout + result.stderr)
    if translated:
        return Found(
            True,
            ("platform: this Python is x86_64 translated by Rosetta 2 on an Apple Silicon Mac",),
        )
    return Found(translated)


def detect_tegra(system: System) -> Found[Tegra | None]:
    if system.system != "linux":
        return Found(None)
    text = system.read_text(NV_TEGRA_RELEASE)
    release = system.release
    kernel = release if is_tegra_kernel(release) else None
    if text is not None:
        l4t = parse_nv_tegra_release(text)
        if l4t:
            return Found(Tegra(l4t, kernel, "nv_tegra_release"))
    if kernel:
        return Found(Tegra(None, kernel, "kernel"))
    # Jetson's integrated GPU driver; seen in a container whose kernel release was renamed.
    if system.path("/sys/module/nvgpu").exists():
        return Found(Tegra(None, release, "nvgpu"))
    return Found(None)


def detect_wsl_lib_dir(system: System) -> Found[str | None]:
    if system.system != "linux":
        return Found(None)
    d = system.path(WSL_LIB_DIR)
    if not d.is_dir():
        return Found(None)
    try:
        names = sorted(p.name for p in d.iterdir())
    except OSError:
        names = []
    if not wsl_lib_dir_has_driver(names):
        return Found(
            WSL_LIB_DIR,
            (f"platform: WSL2, but {WSL_LIB_DIR} has no libcuda (no NVIDIA driver on the Windows side)",),
        )
    return Found(WSL_LIB_DIR)


def probe_platform(system: System) -> Found[PlatformInfo]:
    """Rosetta, Jetson and WSL2; the NVIDIA fields are filled in by probe_host."""
    notes: list[str] = []
    rosetta = detect_rosetta(system)
    tegra = detect_tegra(system)
    wsl = detect_wsl_lib_dir(system)
    for f in (rosetta, tegra, wsl):
        notes.extend(f.notes)
    return Found(
        PlatformInfo(translated=rosetta.value, tegra=tegra.value, wsl_lib_dir=wsl.value), tuple(notes)
    )
