"""The planner's facts, loaded from recipes/*.toml into typed records.

The TOML files are the data (each fact with its source beside it); this module only gives
them types, so the decisions in provision.planner read attributes, not dictionary keys.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from provision.backends import backend_tables, read_recipe_text
from provision.errors import OperationFailed


@dataclass(frozen=True)
class CudaBuild:
    """One CUDA index of PyTorch: what driver it needs and which GPUs it has kernels for."""

    variant: str
    cuda: str
    driver_linux: str
    driver_windows: str
    sm_min: int
    sm_max: int
    ptx: bool
    torch_max: str  # "" for current builds; "2.12" = only torch below 2.12 has this index

    def covers(self, sm: int) -> bool:
        return self.sm_min <= sm <= self.sm_max or (self.ptx and sm > self.sm_max)


@dataclass(frozen=True)
class TorchRecipes:
    index_base: str
    cuda: tuple[CudaBuild, ...]
    rocm_variant: str
    rocm_gfx: tuple[str, ...]
    macos_x86_64_spec: str
    linux_glibc_min: str


@dataclass(frozen=True)
class NvccRange:
    since: str
    sm_min: int
    sm_max: int


@dataclass(frozen=True)
class LlamaCppRecipes:
    for_version: str
    flags: dict[str, str]
    portable: tuple[str, ...]
    backend_of: dict[str, str]
    legacy: dict[str, str]
    removed: dict[str, str]
    nvcc: tuple[NvccRange, ...]


@dataclass(frozen=True)
class SameFiles:
    module: str
    dists: tuple[str, ...]
    note: str
    allowed_when: str | None = None


@dataclass(frozen=True)
class ResolveRecipes:
    manylinux: dict[str, tuple[str, ...]]  # arch -> glibc versions uv has a platform tag for
    sdist_only: dict[str, tuple[str, ...]]
    same_files: tuple[SameFiles, ...]


@dataclass(frozen=True)
class Recipes:
    torch: TorchRecipes
    engines: dict[str, dict[str, Any]]
    llama_cpp: LlamaCppRecipes
    resolve: ResolveRecipes

    def engine(self, name: str) -> dict[str, Any]:
        return self.engines[name]

    def version(self, name: str) -> str:
        return str(self.engines[name]["version"])


def _read(name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(read_recipe_text(name))
    except tomllib.TOMLDecodeError as e:
        raise OperationFailed(f"recipes/{name} cannot be read: {e}") from None


def recipes_from_dicts(
    torch: dict[str, Any], engines: dict[str, Any], llama: dict[str, Any], resolve: dict[str, Any]
) -> Recipes:
    try:
        return Recipes(
            torch=TorchRecipes(
                index_base=torch["index_base"],
                cuda=tuple(CudaBuild(**c) for c in torch["cuda"]),
                rocm_variant=torch["rocm"]["variant"],
                rocm_gfx=tuple(torch["rocm"]["gfx"]),
                macos_x86_64_spec=torch["macos_x86_64"]["version_spec"],
                linux_glibc_min=torch["linux"]["glibc_min"],
            ),
            engines=engines,
            llama_cpp=LlamaCppRecipes(
                for_version=llama["for_version"],
                flags=dict(llama["flags"]),
                portable=tuple(llama["portable"]),
                backend_of=dict(llama["backend_of"]),
                legacy=dict(llama["legacy"]),
                removed=dict(llama["removed"]),
                nvcc=tuple(NvccRange(**n) for n in llama["nvcc"]),
            ),
            resolve=ResolveRecipes(
                manylinux={
                    "x86_64": tuple(resolve["manylinux_x86_64"]),
                    "aarch64": tuple(resolve["manylinux_aarch64"]),
                },
                sdist_only={k: tuple(v) for k, v in resolve["sdist_only"].items()},
                same_files=tuple(
                    SameFiles(s["module"], tuple(s["dists"]), s["note"], s.get("allowed_when"))
                    for s in resolve["same_files"]
                ),
            ),
        )
    except (KeyError, TypeError) as e:
        raise OperationFailed(f"recipes: a required entry is missing or malformed ({e})") from None


def load_recipes() -> Recipes:
    return recipes_from_dicts(
        _read("torch.toml"), dict(backend_tables()), _read("llama_cpp.toml"), _read("resolve.toml")
    )
