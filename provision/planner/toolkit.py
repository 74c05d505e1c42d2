"""Whether a CUDA build of llama-cpp-python takes its CUDA toolkit from PyPI, and which one.

Order, written down once (after the planner has decided that the GPUs want a CUDA build):
  1. A host nvcc with cuBLAS that can compile for the GPUs and whose CUDA major the driver
     runs: use it (nothing to fetch).
  2. Otherwise, when the driver runs the CUDA major of a PyPI toolkit (recipes/cuda_toolkit.toml)
     and the platform has its wheels: that toolkit, installed into a cached toolchain directory.
  3. Otherwise none: the planner says what to install, as before.
Pure: reads the profile and the recipe only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from provision.errors import OperationFailed
from provision.planner.recipes import read_recipe
from provision.planner.versions import at_least, vtuple
from provision.profile import HostProfile


@dataclass(frozen=True)
class ToolkitRecipe:
    """One PyPI CUDA toolkit (a [[toolkit]] table of recipes/cuda_toolkit.toml)."""

    cuda: str
    nvcc: str
    prefix: str
    driver_min: str
    platforms: tuple[str, ...]
    packages: tuple[str, ...]
    tools: tuple[str, ...]
    unversioned: tuple[str, ...]
    driver_symbols: tuple[str, ...]
    rpath_from_lib: str

    @classmethod
    def from_table(cls, t: dict[str, Any]) -> ToolkitRecipe:
        return cls(
            cuda=str(t["cuda"]),
            nvcc=str(t["nvcc"]),
            prefix=str(t["prefix"]),
            driver_min=str(t["driver_min"]),
            platforms=tuple(t["platforms"]),
            packages=tuple(t["packages"]),
            tools=tuple(t["tools"]),
            unversioned=tuple(t["unversioned"]),
            driver_symbols=tuple(t["driver_symbols"]),
            rpath_from_lib=str(t["rpath_from_lib"]),
        )


@functools.lru_cache(maxsize=1)
def toolkit_recipes() -> tuple[ToolkitRecipe, ...]:
    try:
        data = read_recipe("cuda_toolkit.toml")
        return tuple(ToolkitRecipe.from_table(t) for t in data["toolkit"])
    except (KeyError, TypeError) as e:
        raise OperationFailed(f"recipes/cuda_toolkit.toml cannot be read: {e}") from None


def toolkit_by_nvcc(nvcc: str) -> ToolkitRecipe | None:
    return next((t for t in toolkit_recipes() if t.nvcc == nvcc), None)


def _platform(profile: HostProfile) -> str:
    return f"{profile.os.system}-{profile.os.arch}"


def _driver_runs(profile: HostProfile, cuda: str, driver_min: str) -> bool:
    nvidia = profile.nvidia
    if nvidia is None:
        return False
    if nvidia.cuda_driver_version:
        return vtuple(nvidia.cuda_driver_version)[:1] >= vtuple(cuda)[:1]
    return bool(nvidia.driver_version) and at_least(nvidia.driver_version or "", driver_min)


def pypi_toolkit(profile: HostProfile, recipes: tuple[ToolkitRecipe, ...]) -> ToolkitRecipe | None:
    """The newest PyPI toolkit this platform has wheels for and the driver runs; None if none."""
    for t in sorted(recipes, key=lambda r: vtuple(r.nvcc), reverse=True):
        if _platform(profile) in t.platforms and _driver_runs(profile, t.cuda, t.driver_min):
            return t
    return None


def pypi_toolkit_reason(t: ToolkitRecipe, why_not_host: str) -> str:
    """The plan's words for taking the toolkit from PyPI, formatted from the recipe."""
    names = ", ".join(p.split("==")[0].removeprefix("nvidia-") for p in t.packages)
    return f"CUDA {t.cuda} toolkit from PyPI (nvcc {t.nvcc}; {names}), cached per version: {why_not_host}"
