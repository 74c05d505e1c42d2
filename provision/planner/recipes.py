"""The planner's facts, loaded from recipes/*.toml into typed records.

The TOML files are the data (each fact with its source beside it); this module only gives
them types, so the decisions in provision.planner read attributes, not dictionary keys.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from provision.backends import backend_tables, read_recipe_text
from provision.errors import OperationFailed

# One backend's table of recipes/backends.toml, for the planner rule that reads its own keys.
EngineTable = Mapping[str, Any]


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
class XllamacppCudaWheel:
    """One CUDA index of xllamacpp (recipes/backends.toml [[xllamacpp.cuda]])."""

    index: str
    cuda: str
    driver_linux: str
    driver_windows: str
    sass: tuple[int, ...]  # native code, runs on exactly that arch
    ptx: tuple[int, ...]  # PTX only: JIT onto arch >= it, when the driver supports `cuda`


@dataclass(frozen=True)
class XllamacppRocmWheel:
    """One ROCm index of xllamacpp (recipes/backends.toml [[xllamacpp.rocm]])."""

    index: str
    rocm_min: str
    gfx: tuple[str, ...]


@dataclass(frozen=True)
class XllamacppRecipes:
    version: str
    python_min: str
    linux_tag: str
    linux_glibc_min: str
    gpu_index_base: str
    cuda_platforms: tuple[str, ...]
    cuda_glibc_min: str
    rocm_glibc_min: str
    # (driver branch, the CUDA version it supports natively), newest first.
    driver_cuda: tuple[tuple[str, str], ...]
    cuda: tuple[XllamacppCudaWheel, ...]
    rocm: tuple[XllamacppRocmWheel, ...]

    @classmethod
    def from_table(cls, t: EngineTable) -> XllamacppRecipes:
        return cls(
            version=str(t["version"]),
            python_min=t["python_min"],
            linux_tag=t["linux_tag"],
            linux_glibc_min=t["linux_glibc_min"],
            gpu_index_base=t["gpu_index_base"],
            cuda_platforms=tuple(t["cuda_platforms"]),
            cuda_glibc_min=t["cuda_glibc_min"],
            rocm_glibc_min=t["rocm_glibc_min"],
            driver_cuda=tuple((str(branch), str(cuda)) for branch, cuda in t["driver_cuda"]),
            cuda=tuple(
                XllamacppCudaWheel(
                    index=w["index"],
                    cuda=w["cuda"],
                    driver_linux=w["driver_linux"],
                    driver_windows=w["driver_windows"],
                    sass=tuple(w["sass"]),
                    ptx=tuple(w["ptx"]),
                )
                for w in t["cuda"]
            ),
            rocm=tuple(XllamacppRocmWheel(w["index"], w["rocm_min"], tuple(w["gfx"])) for w in t["rocm"]),
        )


@dataclass(frozen=True)
class Recipes:
    torch: TorchRecipes
    # Each backend's table in recipes/backends.toml as written: the keys every backend has are
    # typed in provision.backends.BackendRecipe; the rest are the facts its own planner rule reads.
    engines: Mapping[str, EngineTable]
    llama_cpp: LlamaCppRecipes
    resolve: ResolveRecipes
    xllamacpp: XllamacppRecipes
    # recipes/model_types.toml: Xinference's extras per model type (provision.planner.model_types).
    model_types: dict[str, Any] = field(default_factory=dict)

    def engine(self, name: str) -> EngineTable:
        return self.engines[name]

    def version(self, name: str) -> str:
        return str(self.engines[name]["version"])


def read_recipe(name: str) -> dict[str, Any]:
    """One recipes/*.toml file, parsed; OperationFailed naming the file when it cannot be."""
    return _read(name)


def _read(name: str) -> dict[str, Any]:
    try:
        table: dict[str, Any] = tomllib.loads(read_recipe_text(name))
        return table
    except tomllib.TOMLDecodeError as e:
        raise OperationFailed(f"recipes/{name} cannot be read: {e}") from None


def recipes_from_dicts(
    torch: dict[str, Any],
    engines: dict[str, Any],
    llama: dict[str, Any],
    resolve: dict[str, Any],
    model_types: dict[str, Any] | None = None,
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
            xllamacpp=XllamacppRecipes.from_table(engines["xllamacpp"]),
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
            model_types=model_types or {},
        )
    except (KeyError, TypeError) as e:
        raise OperationFailed(f"recipes: a required entry is missing or malformed ({e})") from None


def load_recipes() -> Recipes:
    return recipes_from_dicts(
        _read("torch.toml"),
        dict(backend_tables()),
        _read("llama_cpp.toml"),
        _read("resolve.toml"),
        _read("model_types.toml"),
    )
