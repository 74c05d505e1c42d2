"""make_plan: profile + request + recipes -> Plan. Pure: no I/O, no environment variables."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from provision import backends as registry
from provision.errors import UserError
from provision.plan import (
    PRIMARY_ENV,
    BackendDecision,
    Environment,
    Plan,
    PlanRequest,
    PlanWarning,
    TorchChoice,
)
from provision.planner import engines, host_classes, model_types, xllamacpp
from provision.planner.recipes import Recipes
from provision.planner.torch_choice import choose_torch
from provision.profile import HostProfile


def make_plan(profile: HostProfile, request: PlanRequest, recipes: Recipes) -> Plan:
    asked = _asked(request)
    base = request.torch_index_base or recipes.torch.index_base
    # The plan keeps the real profile; the engines are planned for what the runtime will report
    # (an RDNA2 gfx1031 as gfx1030 under HSA_OVERRIDE_GFX_VERSION: provision.planner.host_classes).
    real, profile = profile, host_classes.effective_profile(profile)
    outcome = choose_torch(profile, recipes, base)
    torch, host_torch_warnings = host_classes.adjust_torch(real, outcome.choice)
    warnings: list[PlanWarning] = list(outcome.warnings if torch is outcome.choice else host_torch_warnings)
    warnings += host_classes.host_warnings(real)
    warnings += [PlanWarning("profile-note", n) for n in profile.notes]

    # A backend's own rule where it has one; a backend without one installs its recipe's pin.
    rules: dict[str, Callable[[], engines.EngineOutcome]] = {
        "transformers": lambda: engines.decide_transformers(profile, recipes, torch),
        "llama-cpp-python": lambda: engines.decide_llama_cpp_python(
            profile, recipes, request.user_cmake_args, request.portable_cpu
        ),
        "xllamacpp": lambda: xllamacpp.decide_xllamacpp(profile, recipes),
        "vllm": lambda: engines.decide_vllm(profile, recipes, base, by_name=request.backends is not None),
        "sglang": lambda: engines.decide_sglang(profile, recipes, base),
    }
    decided: dict[str, engines.EngineOutcome] = {}
    for name in asked:
        if name != "xinference":
            rule = rules.get(name)
            recipe = registry.backend(name)
            decided[name] = _host_class(
                real, rule() if rule else engines.decide_pinned(profile, recipes, recipe, torch)
            )
    if "llm" not in request.model_types:
        decided = {n: model_types.leave_out_llm(n) for n in decided}
    # Xinference last: its extras follow the engines planned beside it.
    if "xinference" in asked:
        planned = {n for n, d in decided.items() if d.backend.action == "install"}
        decided["xinference"] = _host_class(
            real,
            model_types.apply(
                engines.decide_xinference(profile, recipes, planned),
                request.model_types,
                recipes.model_types,
                recipes.engine("xinference"),
                torch,
            ),
        )

    order = registry.names()
    backends = tuple(decided[n].backend for n in order if n in decided)
    for n in order:
        if n in decided:
            warnings += decided[n].warnings
    environments = _environments(backends, decided, torch)
    env_torch = {e.name: e.torch for e in environments}
    warnings += host_classes.engine_warnings(
        real, backends, {b.name: env_torch.get(b.environment or "") for b in backends}
    )
    if request.backends is None and not any(b.action == "install" for b in backends):
        warnings.append(
            PlanWarning("nothing-to-install", "no backend can be installed on this host: see each reason")
        )
    return Plan(
        profile=real,
        request=request,
        torch=torch,
        backends=backends,
        environments=environments,
        warnings=tuple(_dedupe(warnings)),
    )


def _host_class(profile: HostProfile, outcome: engines.EngineOutcome) -> engines.EngineOutcome:
    """The decision after the host-class rules; a decision they change drops its own warnings."""
    backend = host_classes.adjust_backend(profile, outcome.backend)
    if backend == outcome.backend:
        return outcome
    return dataclasses.replace(outcome, backend=backend, warnings=())


def _asked(request: PlanRequest) -> tuple[str, ...]:
    if request.backends is None:
        return registry.names()
    registry.check_known(request.backends)
    if not request.backends:
        raise UserError("no backend asked for: use --auto or --backend NAME")
    return tuple(dict.fromkeys(request.backends))


def _environments(
    backends: tuple[BackendDecision, ...], decided: dict[str, engines.EngineOutcome], torch: TorchChoice
) -> tuple[Environment, ...]:
    main = tuple(b for b in backends if b.action == "install" and b.environment == PRIMARY_ENV)
    main_names = tuple(b.name for b in main)
    needs_torch = any(registry.backend(n).needs_torch for n in main_names)
    reason = (
        "primary: Xinference and the engines that co-install with it"
        if main
        else "primary: holds the receipt; nothing is planned into it"
    )
    envs = [
        Environment(
            name=PRIMARY_ENV,
            backends=main_names,
            torch=torch if needs_torch else None,
            requirements=tuple(p for b in main for p in b.packages),
            reason=reason,
        )
    ]
    for b in backends:
        if b.action != "install" or b.environment is None or b.environment == PRIMARY_ENV:
            continue
        d = decided[b.name]
        envs.append(
            Environment(
                name=b.environment,
                backends=(b.name,),
                torch=d.torch,
                requirements=b.packages,
                reason=d.env_reason,
                python=d.env_python,
            )
        )
    return tuple(envs)


def _dedupe(warnings: list[PlanWarning]) -> list[PlanWarning]:
    seen: set[str] = set()
    out = []
    for w in warnings:
        if w.message not in seen:
            seen.add(w.message)
            out.append(w)
    return out
