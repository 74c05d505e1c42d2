"""The host profile (schema v2): typed, read from and written to JSON.

The schema is the dataclasses below, in the JSON form to_dict() writes (`probe --json`;
tests/profiles/ holds real ones). Required fields are checked here; extra fields we add
(toolchain.cuda_cublas, nvidia.source, notes, ...) are optional so that profiles written by
hand or by an older probe still load. Unknown fields are ignored on read.

v2 adds `platform` (Rosetta, Jetson/L4T, WSL's library directory, an NVML error, vGPU/MIG).
A v1 profile still loads: `platform` is then empty, and the properties below (rosetta,
jetson, wsl) infer what they can from the fields v1 had (an Apple CPU brand under an
x86_64 interpreter; a `-tegra` kernel release; a `microsoft` kernel release).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from provision.errors import ProfileError

SCHEMA_VERSION = 2
# Profiles an older probe wrote, still read (what they lack is inferred; see HostProfile).
READABLE_VERSIONS = (1, 2)

SYSTEMS = ("linux", "darwin", "windows")
GPU_VENDORS = ("nvidia", "amd", "apple", "intel")


@dataclass(frozen=True)
class OSInfo:
    system: str
    release: str | None
    machine: str
    libc: str | None

    @property
    def libc_name(self) -> str | None:
        return self.libc.split()[0] if self.libc else None

    @property
    def glibc_version(self) -> tuple[int, int] | None:
        """(major, minor) when libc is glibc, else None (musl, macOS, Windows, unknown)."""
        if not self.libc or self.libc_name != "glibc":
            return None
        m = re.search(r"(\d+)\.(\d+)", self.libc)
        return (int(m.group(1)), int(m.group(2))) if m else None

    @property
    def arch(self) -> str:
        """Normalised architecture: x86_64 or aarch64 (arm64 on macOS stays arm64)."""
        m = self.machine.lower()
        if m in ("amd64", "x86_64", "x64"):
            return "x86_64"
        if m in ("aarch64", "arm64"):
            return "arm64" if self.system == "darwin" else "aarch64"
        return m


@dataclass(frozen=True)
class PythonInfo:
    version: str
    implementation: str

    @property
    def minor(self) -> tuple[int, int]:
        parts = self.version.split(".")
        return (int(parts[0]), int(parts[1]))


@dataclass(frozen=True)
class CPUInfo:
    brand: str | None
    cores: int | None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class GPU:
    vendor: str
    name: str
    memory_mb: int | None = None
    compute_capability: str | None = None  # NVIDIA, "8.6"
    gfx: str | None = None  # AMD, "gfx942"
    index: int | None = None

    @property
    def sm(self) -> int | None:
        """Compute capability as an integer, 8.6 -> 86, 12.0 -> 120."""
        if not self.compute_capability:
            return None
        major, _, minor = self.compute_capability.partition(".")
        return int(major) * 10 + int(minor or 0)


@dataclass(frozen=True)
class NvidiaDriver:
    driver_version: str
    cuda_driver_version: str | None
    source: str | None = None  # nvml, nvidia-smi, proc, env

    @property
    def driver_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", self.driver_version)[:3])


@dataclass(frozen=True)
class RocmInfo:
    version: str | None


@dataclass(frozen=True)
class Toolchain:
    cmake: str | None = None
    cc: str | None = None
    nvcc: str | None = None
    hipcc: str | None = None
    ninja: str | None = None
    ccache: str | None = None
    # None: unknown (an older profile); False: nvcc without cuBLAS, which cannot build llama.cpp.
    cuda_cublas: bool | None = None


GpuVirtualization = Literal["mig", "vgpu", "passthrough"]
GPU_VIRTUALIZATION: tuple[GpuVirtualization, ...] = ("mig", "vgpu", "passthrough")


@dataclass(frozen=True)
class Tegra:
    """A Jetson (Tegra SoC): the L4T release from /etc/nv_tegra_release ("36.4.0"), or only
    the `-tegra` kernel release when that file is absent (a container, an old profile)."""

    l4t: str | None
    kernel: str | None = None
    source: str = "nv_tegra_release"  # nv_tegra_release, kernel, nvgpu


@dataclass(frozen=True)
class PlatformInfo:
    # sysctl.proc_translated: True = this Python runs under Rosetta 2 (x86_64 on Apple Silicon).
    translated: bool | None = None
    tegra: Tegra | None = None
    # WSL2: where the Windows driver's libcuda.so and nvidia-smi are mapped (/usr/lib/wsl/lib).
    wsl_lib_dir: str | None = None
    # NVML failed for a reason other than "no driver": the GPUs may be there all the same.
    nvml_error: str | None = None
    gpu_virtualization: tuple[GpuVirtualization, ...] = ()


@dataclass(frozen=True)
class HostProfile:
    os: OSInfo
    python: PythonInfo
    cpu: CPUInfo
    memory_mb: int | None
    gpus: tuple[GPU, ...]
    nvidia: NvidiaDriver | None
    rocm: RocmInfo | None
    toolchain: Toolchain
    schema_version: int = SCHEMA_VERSION
    # Things the probe saw that a plan should mention (e.g. "NVIDIA GPU on the PCI bus, no driver answering").
    notes: tuple[str, ...] = field(default_factory=tuple)
    platform: PlatformInfo = field(default_factory=PlatformInfo)

    @property
    def rosetta(self) -> bool:
        """An x86_64 Python translated by Rosetta 2 on an Apple Silicon Mac. A v1 profile has no
        proc_translated, but its CPU brand gives it away: Intel Macs never report "Apple M..."."""
        if self.platform.translated is not None:
            return self.platform.translated
        brand = (self.cpu.brand or "").strip()
        return self.os.system == "darwin" and self.os.arch == "x86_64" and brand.startswith("Apple")

    @property
    def jetson(self) -> Tegra | None:
        """The Jetson this is, if it is one: probed, else inferred from a `-tegra` kernel release."""
        if self.platform.tegra is not None:
            return self.platform.tegra
        release = self.os.release or ""
        if self.os.system == "linux" and self.os.arch == "aarch64" and re.search(r"-tegra\b", release):
            return Tegra(l4t=None, kernel=release, source="kernel")
        return None

    @property
    def wsl(self) -> bool:
        """WSL2: the library directory was seen, or the kernel release is Microsoft's."""
        release = (self.os.release or "").lower()
        return self.platform.wsl_lib_dir is not None or (self.os.system == "linux" and "microsoft" in release)

    @property
    def nvidia_gpus(self) -> tuple[GPU, ...]:
        return tuple(g for g in self.gpus if g.vendor == "nvidia")

    @property
    def amd_gpus(self) -> tuple[GPU, ...]:
        return tuple(g for g in self.gpus if g.vendor == "amd")

    @property
    def apple_gpus(self) -> tuple[GPU, ...]:
        return tuple(g for g in self.gpus if g.vendor == "apple")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpu"]["flags"] = list(self.cpu.flags)
        d["gpus"] = [_drop_none(asdict(g), keep=("vendor", "name", "memory_mb")) for g in self.gpus]
        d["notes"] = list(self.notes)
        d["platform"]["gpu_virtualization"] = list(self.platform.gpu_virtualization)
        ordered = {"schema_version": d.pop("schema_version")}
        ordered.update(d)
        return ordered

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _drop_none(d: dict[str, Any], keep: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None or k in keep}


# ---------------------------------------------------------------- reading


def _req(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict):
        raise ProfileError(f"profile: '{where}' must be an object")
    if key not in d:
        path = f"{where}.{key}" if where else key
        raise ProfileError(f"profile: missing required field '{path}'")
    return d[key]


def _str_or_none(v: Any, path: str) -> str | None:
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str):
        raise ProfileError(f"profile: '{path}' must be a string or null")
    return v


def _str(v: Any, path: str) -> str:
    s = _str_or_none(v, path)
    if not s:
        raise ProfileError(f"profile: '{path}' must be a non-empty string")
    return s


def _int_or_none(v: Any, path: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProfileError(f"profile: '{path}' must be a number or null")
    return int(v)


_TOOLS = ("cmake", "cc", "nvcc", "hipcc", "ninja", "ccache")


def profile_from_dict(d: Any) -> HostProfile:
    """Validate and type a v1 profile. Raises ProfileError with a one-line reason."""
    if not isinstance(d, dict):
        raise ProfileError("profile: expected a JSON object")
    version = _req(d, "schema_version", "")
    if version not in READABLE_VERSIONS:
        raise ProfileError(
            f"profile: schema_version {version!r} is not supported "
            f"(expected one of {', '.join(str(v) for v in READABLE_VERSIONS)})"
        )

    o = _req(d, "os", "")
    system = _str(_req(o, "system", "os"), "os.system").lower()
    if system not in SYSTEMS:
        raise ProfileError(f"profile: os.system {system!r} is not one of {', '.join(SYSTEMS)}")
    os_info = OSInfo(
        system=system,
        release=_str_or_none(o.get("release"), "os.release"),
        machine=_str(_req(o, "machine", "os"), "os.machine"),
        libc=_str_or_none(_req(o, "libc", "os"), "os.libc"),
    )

    p = _req(d, "python", "")
    py_version = _str(_req(p, "version", "python"), "python.version")
    if not re.match(r"^\d+\.\d+(\.\d+)?", py_version):
        raise ProfileError(f"profile: python.version {py_version!r} is not a version")
    implementation = _str(p.get("implementation", "cpython"), "python.implementation")
    python = PythonInfo(version=py_version, implementation=implementation)

    c = _req(d, "cpu", "")
    flags = c.get("flags") or []
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise ProfileError("profile: 'cpu.flags' must be a list of strings")
    cpu = CPUInfo(
        brand=_str_or_none(c.get("brand"), "cpu.brand"),
        cores=_int_or_none(c.get("cores"), "cpu.cores"),
        flags=tuple(f.lower() for f in flags),
    )

    gpus_raw = _req(d, "gpus", "")
    if not isinstance(gpus_raw, list):
        raise ProfileError("profile: 'gpus' must be a list")
    gpus = []
    for i, g in enumerate(gpus_raw):
        where = f"gpus[{i}]"
        vendor = _str(_req(g, "vendor", where), f"{where}.vendor").lower()
        if vendor not in GPU_VENDORS:
            raise ProfileError(f"profile: {where}.vendor {vendor!r} is not one of {', '.join(GPU_VENDORS)}")
        cc = _str_or_none(g.get("compute_capability"), f"{where}.compute_capability")
        if cc is not None and not re.fullmatch(r"\d+\.\d+", cc):
            raise ProfileError(f"profile: {where}.compute_capability {cc!r} must look like '8.6'")
        gfx = _str_or_none(g.get("gfx"), f"{where}.gfx")
        if gfx is not None and not re.fullmatch(r"gfx[0-9a-f]+", gfx.lower()):
            raise ProfileError(f"profile: {where}.gfx {gfx!r} must look like 'gfx942'")
        gpus.append(
            GPU(
                vendor=vendor,
                name=_str(_req(g, "name", where), f"{where}.name"),
                memory_mb=_int_or_none(g.get("memory_mb"), f"{where}.memory_mb"),
                compute_capability=cc,
                gfx=gfx.lower() if gfx else None,
                index=_int_or_none(g.get("index"), f"{where}.index"),
            )
        )

    n = _req(d, "nvidia", "")
    nvidia = None
    if n is not None:
        nvidia = NvidiaDriver(
            driver_version=_str(_req(n, "driver_version", "nvidia"), "nvidia.driver_version"),
            cuda_driver_version=_str_or_none(n.get("cuda_driver_version"), "nvidia.cuda_driver_version"),
            source=_str_or_none(n.get("source"), "nvidia.source"),
        )

    r = _req(d, "rocm", "")
    rocm = None if r is None else RocmInfo(version=_str_or_none(_req(r, "version", "rocm"), "rocm.version"))

    t = _req(d, "toolchain", "")
    if not isinstance(t, dict):
        raise ProfileError("profile: 'toolchain' must be an object")
    cublas = t.get("cuda_cublas")
    if cublas is not None and not isinstance(cublas, bool):
        raise ProfileError("profile: 'toolchain.cuda_cublas' must be true, false or null")
    toolchain = Toolchain(
        **{k: _str_or_none(t.get(k), f"toolchain.{k}") for k in _TOOLS},
        cuda_cublas=cublas,
    )

    notes = d.get("notes") or []
    if not isinstance(notes, list):
        raise ProfileError("profile: 'notes' must be a list of strings")

    return HostProfile(
        os=os_info,
        python=python,
        cpu=cpu,
        memory_mb=_int_or_none(_req(d, "memory_mb", ""), "memory_mb"),
        gpus=tuple(gpus),
        nvidia=nvidia,
        rocm=rocm,
        toolchain=toolchain,
        notes=tuple(str(x) for x in notes),
        platform=_platform(d.get("platform")),
    )


def _platform(p: Any) -> PlatformInfo:
    """v2's `platform`; absent (v1) or null -> nothing known (HostProfile's properties infer)."""
    if p is None:
        return PlatformInfo()
    if not isinstance(p, dict):
        raise ProfileError("profile: 'platform' must be an object")
    translated = p.get("translated")
    if translated is not None and not isinstance(translated, bool):
        raise ProfileError("profile: 'platform.translated' must be true, false or null")
    t = p.get("tegra")
    tegra = None
    if t is not None:
        if not isinstance(t, dict):
            raise ProfileError("profile: 'platform.tegra' must be an object or null")
        l4t = _str_or_none(t.get("l4t"), "platform.tegra.l4t")
        if l4t is not None and not re.fullmatch(r"\d+(\.\d+)*", l4t):
            raise ProfileError(f"profile: platform.tegra.l4t {l4t!r} must look like '36.4.0'")
        tegra = Tegra(
            l4t=l4t,
            kernel=_str_or_none(t.get("kernel"), "platform.tegra.kernel"),
            source=_str_or_none(t.get("source"), "platform.tegra.source") or "nv_tegra_release",
        )
    virt = p.get("gpu_virtualization") or []
    if not isinstance(virt, list) or any(v not in GPU_VIRTUALIZATION for v in virt):
        raise ProfileError(
            f"profile: 'platform.gpu_virtualization' must be a list of {', '.join(GPU_VIRTUALIZATION)}"
        )
    return PlatformInfo(
        translated=translated,
        tegra=tegra,
        wsl_lib_dir=_str_or_none(p.get("wsl_lib_dir"), "platform.wsl_lib_dir"),
        nvml_error=_str_or_none(p.get("nvml_error"), "platform.nvml_error"),
        gpu_virtualization=tuple(virt),
    )


def load_profile(path: str | Path) -> HostProfile:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"profile: no such file: {p}") from None
    except OSError as e:
        raise ProfileError(f"profile: cannot read {p}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno}, column {e.colno}"
        raise ProfileError(f"profile: {p} is not valid JSON ({where}: {e.msg})") from None
    return profile_from_dict(data)
