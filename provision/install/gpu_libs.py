"""What a GPU library holds, read from its files: proven on a host with no GPU and no driver.

For llama-cpp-python's libggml-cuda.so (or -hip):
- the libraries it needs (DT_NEEDED) and where it looks for them (DT_RUNPATH), read with
  pyelftools, and whether each needed CUDA library resolves through that run path inside the
  environment (the driver, libcuda.so.1, is the host's and is left to a GPU host);
- the newest glibc symbol version any of the wheel's libraries needs (its real glibc floor);
- the GPU code it carries per architecture: cuobjdump's listing of the fatbinary's ELF (SASS)
  and PTX entries, when a cuobjdump is at hand (the PyPI toolkit brings one).
Each parser is a small pure function with a sample of its input beside it.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from provision.install.verify import EnvExpectation

# Libraries the NVIDIA driver installs on the host, never shipped in an environment.
DRIVER_LIBS = ("libcuda.so.1", "libnvidia-ml.so.1")


@dataclass(frozen=True)
class ElfFacts:
    needed: tuple[str, ...]
    runpath: tuple[str, ...]
    glibc_max: tuple[int, int] | None  # the newest GLIBC_x.y version it references


@dataclass(frozen=True)
class GpuCode:
    sass: tuple[str, ...] = ()  # "sm_90"
    ptx: tuple[str, ...] = ()  # "compute_90"
    error: str | None = None


@dataclass
class LibReport:
    path: str
    elf: ElfFacts
    unresolved: list[str] = field(default_factory=list)  # needed, not found via run path (driver excluded)
    code: GpuCode | None = None


_GLIBC = re.compile(r"^GLIBC_(\d+)\.(\d+)")


def glibc_max(version_names: list[str]) -> tuple[int, int] | None:
    """Sample: ["GLIBC_2.2.5", "GLIBC_2.34", "GLIBCXX_3.4.29", "CXXABI_1.3"] -> (2, 34)."""
    found = [(int(m.group(1)), int(m.group(2))) for n in version_names if (m := _GLIBC.match(n))]
    return max(found) if found else None


def read_elf(path: Path) -> ElfFacts:
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerNeedSection

    needed: list[str] = []
    runpath: list[str] = []
    versions: list[str] = []
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for section in elf.iter_sections():
            if isinstance(section, DynamicSection):
                for tag in section.iter_tags():
                    # pyelftools sets these attributes per tag kind (no stubs declare them).
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(getattr(tag, "needed"))  # noqa: B009
                    elif tag.entry.d_tag in ("DT_RUNPATH", "DT_RPATH"):
                        value = getattr(tag, "runpath" if tag.entry.d_tag == "DT_RUNPATH" else "rpath")
                        runpath += [p for p in value.split(":") if p]
            elif isinstance(section, GNUVerNeedSection):
                for _verneed, auxes in section.iter_versions():
                    versions += [aux.name for aux in auxes]
    return ElfFacts(tuple(needed), tuple(runpath), glibc_max(versions))


def unresolved(elf: ElfFacts, lib_dir: Path, wanted_prefixes: tuple[str, ...]) -> list[str]:
    """The needed libraries (of those named by wanted_prefixes) no run-path directory holds."""
    dirs = [Path(p.replace("$ORIGIN", str(lib_dir))) for p in elf.runpath]
    return [
        n
        for n in elf.needed
        if n.startswith(wanted_prefixes) and n not in DRIVER_LIBS and not any((d / n).exists() for d in dirs)
    ]


_ELF_LINE = re.compile(r"\.(sm_\d+[af]?)\.cubin")
_PTX_LINE = re.compile(r"\.(sm_\d+[af]?)\.ptx")


def parse_cuobjdump(listing: str) -> GpuCode:
    """cuobjdump --list-elf --list-ptx output.

    Sample (libggml-cuda.so built for 90):
      ELF file    1: libggml-cuda.1.sm_90.cubin
      ELF file    2: libggml-cuda.2.sm_90.cubin
      PTX file    1: libggml-cuda.1.sm_90.ptx
    -> sass ("sm_90",), ptx ("compute_90",).
    """
    sass = sorted(set(_ELF_LINE.findall(listing)))
    ptx = sorted({"compute_" + a[3:] for a in _PTX_LINE.findall(listing)})
    return GpuCode(tuple(sass), tuple(ptx))


def gpu_code(lib: Path, cuobjdump: Path | None) -> GpuCode:
    if cuobjdump is None:
        return GpuCode(error="no cuobjdump at hand to list the GPU code")
    try:
        out = subprocess.run(
            [str(cuobjdump), "--list-elf", "--list-ptx", str(lib)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return GpuCode(error=f"cuobjdump failed: {e}")
    if out.returncode != 0:
        return GpuCode(error=f"cuobjdump failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return parse_cuobjdump(out.stdout)


def report(lib: Path, cuobjdump: Path | None, wanted_prefixes: tuple[str, ...]) -> LibReport:
    elf = read_elf(lib)
    return LibReport(str(lib), elf, unresolved(elf, lib.parent, wanted_prefixes), gpu_code(lib, cuobjdump))


def wheel_glibc_floor(lib_dir: Path) -> tuple[int, int] | None:
    """The newest glibc version any shared library in the directory needs."""
    floors = [read_elf(p).glibc_max for p in sorted(lib_dir.glob("*.so*")) if p.is_file()]
    known = [f for f in floors if f is not None]
    return max(known) if known else None


def llama_static_facts(lib_dir: Path, cuobjdump: Path | None) -> dict:
    """JSON-able facts about llama-cpp-python's CUDA library for verify (no GPU, no driver needed)."""
    cuda = sorted(lib_dir.glob("libggml-cuda*.so*"))
    out: dict = {"lib": None, "glibc_max": None}
    floor = wheel_glibc_floor(lib_dir) if lib_dir.is_dir() else None
    out["glibc_max"] = list(floor) if floor else None
    if not cuda:
        return out
    rep = report(cuda[0], cuobjdump, ("libcudart", "libcublas", "libnvrtc", "libcuda"))
    out["lib"] = Path(rep.path).name
    out["needed"] = list(rep.elf.needed)
    out["runpath"] = list(rep.elf.runpath)
    out["unresolved"] = rep.unresolved
    if rep.code is not None:
        out["sass"], out["ptx"], out["code_error"] = list(rep.code.sass), list(rep.code.ptx), rep.code.error
    return out


def add_static_gpu_facts(expect: EnvExpectation, facts: dict, cuobjdump: Path | None) -> None:
    """Where a CUDA llama.cpp build is expected, what its files prove, into facts (for evaluate)."""
    if "cuda" in expect.llama_backends and facts.get("llama_cpp_dir"):
        facts["llama_gpu_static"] = llama_static_facts(Path(facts["llama_cpp_dir"]), cuobjdump)
