"""Build tools: versions, run side by side with short timeouts, and whether nvcc's toolkit has cuBLAS.

llama.cpp's CUDA build needs cuBLAS (cublas_v2.h and libcublas); an nvcc alone (a
"cuda-nvcc" package, as on this project's CI box) compiles nothing useful, so the
planner must know the difference.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from provision.probe.amd_parse import parse_hip_version
from provision.probe.background import Background
from provision.probe.found import Found
from provision.probe.system import System
from provision.profile import Toolchain

TOOL_TIMEOUT_S = 5.0


def parse_cmake_version(text: str) -> str | None:
    """`cmake version 3.25.1`"""
    m = re.search(r"cmake3? version (\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else None


def parse_cc_version(text: str) -> str | None:
    """First line of `cc --version`, as "<compiler> <version>":

    cc (Debian 12.2.0-14+deb12u1) 12.2.0          -> gcc 12.2.0
    gcc (GCC) 11.4.1 20231218 (Red Hat 11.4.1-3)  -> gcc 11.4.1
    Apple clang version 15.0.0 (clang-1500.3.9.4) -> Apple clang 15.0.0
    Ubuntu clang version 18.1.3 (1ubuntu1)        -> clang 18.1.3
    """
    first = text.strip().splitlines()[0] if text.strip() else ""
    clang = re.search(r"(Apple )?clang version (\d+\.\d+(?:\.\d+)?)", first)
    if clang:
        return f"{clang.group(1) or ''}clang {clang.group(2)}"
    gcc = re.search(r"\)\s+(\d+\.\d+(?:\.\d+)?)", first)
    if gcc and ("Free Software Foundation" in text or re.match(r"(\S*-)?(gcc|g\+\+|cc)\b", first)):
        return f"gcc {gcc.group(1)}"
    return None


def parse_nvcc_version(text: str) -> str | None:
    """`Cuda compilation tools, release 13.0, V13.0.48` -> "13.0"."""
    m = re.search(r"release (\d+\.\d+)", text)
    return m.group(1) if m else None


def parse_ninja_version(text: str) -> str | None:
    """`1.11.1` (ninja prints only the version)."""
    m = re.match(r"\s*(\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else None


def parse_ccache_version(text: str) -> str | None:
    """`ccache version 4.7.5`"""
    m = re.search(r"ccache version (\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else None


class Tool(NamedTuple):
    field: str  # the Toolchain field it fills
    names: tuple[str, ...]  # executables to look for, in order
    parse: Callable[[str], str | None]
    extra_dirs: Callable[[System], Sequence[str]] = lambda system: ()


def _cuda_homes(system: System) -> list[Path]:
    """$CUDA_HOME, $CUDA_PATH (what NVIDIA's Windows installer sets), then /usr/local/cuda."""
    env_roots = (system.env.get("CUDA_HOME"), system.env.get("CUDA_PATH"))
    return [Path(r) for r in env_roots if r] + [system.path("/usr/local/cuda")]


def _cuda_bins(system: System) -> list[str]:
    return [str(root / "bin") for root in _cuda_homes(system)]


def _rocm_bins(system: System) -> list[str]:
    return [str(Path(r) / "bin") for r in (system.env.get("ROCM_PATH"), str(system.path("/opt/rocm"))) if r]


TOOLS = (
    Tool("cmake", ("cmake",), parse_cmake_version),
    Tool("cc", ("cc", "gcc", "clang"), parse_cc_version),
    Tool("nvcc", ("nvcc",), parse_nvcc_version, _cuda_bins),
    Tool("hipcc", ("hipcc",), parse_hip_version, _rocm_bins),
    Tool("ninja", ("ninja",), parse_ninja_version),
    Tool("ccache", ("ccache",), parse_ccache_version),
)


def _find(system: System, tool: Tool) -> Path | None:
    if tool.field == "cc" and (cc := system.env.get("CC", "").split()):
        # The compiler a CMake build will really use.
        return Path(cc[0]) if os.path.isabs(cc[0]) else system.which(cc[0])
    for name in tool.names:
        if path := system.which(name, tool.extra_dirs(system)):
            return path
    return None


def find_nvcc(system: System) -> Path | None:
    """nvcc where the probe looks for it (PATH, $CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin):
    the one the plan was made with, for the build to use."""
    return _find(system, next(t for t in TOOLS if t.field == "nvcc"))


class ToolReport(NamedTuple):
    path: Path | None
    version: str | None
    error: str | None = None


def _report(system: System, tool: Tool) -> ToolReport:
    """Find one tool and ask its version; PATH lookup included, so every tool starts at once."""
    path = _find(system, tool)
    if path is None:
        return ToolReport(None, None)
    try:
        result = system.run([str(path), "--version"], TOOL_TIMEOUT_S)
    except Exception as e:  # OSError, TimeoutExpired
        return ToolReport(path, None, f"{type(e).__name__}: {e}")
    return ToolReport(path, tool.parse(result.stdout + "\n" + result.stderr) if result.ok else None)


def cuda_toolkit_roots(system: System, nvcc: Path) -> list[Path]:
    """Where nvcc's toolkit may live: nvcc's own parent first, but /usr/local/bin/nvcc is often a
    wrapper script whose parent is not a toolkit, so the usual install roots follow."""
    candidates = [Path(os.path.realpath(nvcc)).parent.parent, *_cuda_homes(system)]
    seen: list[Path] = []
    for root in candidates:
        if root not in seen and (
            (root / "include" / "cuda_runtime.h").exists() or list(root.glob("targets/*/include"))
        ):
            seen.append(root)
    return seen


def has_cublas(root: Path) -> bool:
    header = [root / "include" / "cublas_v2.h", *root.glob("targets/*/include/cublas_v2.h")]
    libs = (
        "lib64/libcublas.so*",
        "lib/libcublas.so*",
        "lib/*-linux-gnu/libcublas.so*",
        "targets/*/lib/libcublas.so*",
        "lib/x64/cublas.lib",
        "lib/libcublas*.dylib",
    )
    return any(h.exists() for h in header) and any(next(root.glob(g), None) for g in libs)


def probe_toolchain(system: System) -> Found[Toolchain]:
    notes: list[str] = []
    tasks = {tool.field: Background(functools.partial(_report, system, tool), tool.field) for tool in TOOLS}
    reports: dict[str, ToolReport] = {}
    for field_name, task in tasks.items():
        try:
            report = reports[field_name] = task.result(TOOL_TIMEOUT_S + 2)
        except Exception as e:  # the backstop deadline
            notes.append(f"toolchain: {field_name}: {e}")
            continue
        if report.error:
            notes.append(f"toolchain: {report.path} --version failed ({report.error})")
        elif report.path is not None and report.version is None:
            notes.append(f"toolchain: could not read the version of {report.path}")
    versions = {name: r.version for name, r in reports.items()}
    cublas = None
    if (nvcc := reports["nvcc"].path if "nvcc" in reports else None) is not None:
        roots = cuda_toolkit_roots(system, nvcc)
        cublas = any(has_cublas(r) for r in roots)
        if not cublas:
            where = ", ".join(str(r) for r in roots) or "no toolkit directory found"
            notes.append(
                f"toolchain: nvcc found but not cuBLAS ({where}); a CUDA build of llama.cpp is not possible"
            )
    return Found(Toolchain(**versions, cuda_cublas=cublas), tuple(notes))
