"""The serving decision as a pure function: which candidate (a built-in name's spec), which
engine, whether and how it fits, and the launch settings. run.py gathers the inputs and
carries the decision out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from provision.engines.adapters import Dtype, LaunchSettings
from provision.errors import UserError
from provision.profile import HostProfile
from provision.serve.choice import EngineChoice, choose_engine
from provision.serve.fit import (
    DTYPE_BYTES,
    Fit,
    FitFacts,
    FitInput,
    ModelShape,
    Target,
    engine_kind,
    fit_model,
)
from provision.serve.rules import ServeRules
from provision.serve.settings import launch_settings, run_dtype, target_for
from provision.serve.sources import Candidate


@dataclass(frozen=True)
class ServeOptions:
    engine: str | None = None
    max_model_len: int | None = None
    gpus: tuple[int, ...] | None = None
    dtype: str | None = None
    gpu_memory_fraction: float | None = None
    force: bool = False


@dataclass(frozen=True)
class Planned:
    candidate: Candidate
    choice: EngineChoice
    fit: Fit
    dtype: Dtype
    dtype_reason: str
    target: Target
    launch: LaunchSettings

    @property
    def env(self) -> dict[str, str]:
        """GPUs beyond those selected stay invisible to the engine."""
        if self.target.kind != "cuda":
            return {}
        used = self.target.devices[: max(self.fit.devices, 1)]
        return {"CUDA_VISIBLE_DEVICES": ",".join(str(d.index) for d in used)}


def _shape_or_guess(c: Candidate) -> ModelShape:
    if c.shape is not None:
        return c.shape
    # No layer facts (a config without them): weights only, no KV estimate.
    return ModelShape(
        layers=0,
        attention_heads=1,
        kv_heads=0,
        head_dim=0,
        hidden=0,
        intermediate=0,
        vocab=0,
        max_context=c.facts.context_length,
    )


def _weights_in(c: Candidate, shape: ModelShape, dtype: Dtype) -> int:
    """Checkpoint bytes scaled to the dtype an unquantized model runs in."""
    if c.weights_bytes is None:
        # No index and no weights: count parameters from the shape (dense layers; a guess).
        per_layer = 4 * shape.hidden * shape.hidden + 3 * shape.hidden * shape.intermediate
        params = shape.layers * per_layer + 2 * shape.vocab * shape.hidden
        return params * DTYPE_BYTES.get(dtype, 2)
    if c.facts.kind == "hf" and c.facts.quantization == "none" and dtype in DTYPE_BYTES:
        stored = DTYPE_BYTES.get(shape.torch_dtype or "", 2)
        return c.weights_bytes * DTYPE_BYTES[dtype] // stored
    return c.weights_bytes


def _fit_one(
    c: Candidate, choice: EngineChoice, profile: HostProfile, facts: FitFacts, opts: ServeOptions
) -> tuple[Fit, Dtype, str, Target]:
    target = target_for(profile, choice.engine, opts.gpus)
    shape = _shape_or_guess(c)
    model_max = shape.max_context or c.facts.context_length
    if opts.max_model_len is not None and model_max and opts.max_model_len > model_max:
        raise UserError(
            f"--max-model-len {opts.max_model_len} is above {c.served_name}'s maximum context "
            f"({model_max} tokens)"
        )
    kind = engine_kind(choice.engine)

    def attempt(dtype: Dtype) -> Fit:
        kv = 2 if kind == "llama-cpp" else DTYPE_BYTES.get(dtype, 2)
        act = 4 if kind == "llama-cpp" else DTYPE_BYTES.get(dtype, 2)
        return fit_model(
            FitInput(
                _weights_in(c, shape, dtype),
                shape,
                kind,
                kv,
                act,
                opts.max_model_len,
                opts.gpu_memory_fraction,
                choice.engine,
            ),
            target,
            facts,
        )

    dtype, why = run_dtype(shape.torch_dtype, target, profile, opts.dtype)
    fit = attempt(dtype)
    own = shape.torch_dtype if shape.torch_dtype in ("bfloat16", "float16") else "bfloat16"
    if not fit.fits and target.kind == "cpu" and opts.dtype is None and dtype == "float32":
        half = attempt(own)  # type: ignore[arg-type]
        if half.fits:
            return half, own, f"{own}: float32 would need {fit.need_gib:.1f} GiB", target  # type: ignore[return-value]
    return fit, dtype, why, target


def decide_serving(
    candidates: Sequence[Candidate],
    profile: HostProfile,
    installed: frozenset[str],
    rules: ServeRules,
    facts: FitFacts,
    opts: ServeOptions,
    host: str,
    port: int,
    hint_args: str = "",
    elsewhere: frozenset[str] = frozenset(),
) -> Planned:
    """The first candidate (best first) an installed engine serves and that fits; when none
    fits, the best one an engine serves, with fits false. Forms of one model (the tiny model's
    directory and GGUF) are chosen between by engine rules, as one group."""
    if len(candidates) > 1 and all(c.source == "local" for c in candidates):
        groups: list[list[Candidate]] = [list(candidates)]
    else:
        groups = [[c] for c in candidates]
    first_error: UserError | None = None
    fallback: Planned | None = None
    for group in groups:
        try:
            choice = choose_engine(
                [c.facts for c in group], profile, installed, rules, opts.engine, hint_args, elsewhere
            )
        except UserError as e:
            first_error = first_error or e
            continue
        cand = next(c for c in group if c.facts is choice.model)
        fit, dtype, why, target = _fit_one(cand, choice, profile, facts, opts)
        launch = launch_settings(
            choice.engine, cand.served_name, host, port, target, fit, dtype, opts.gpu_memory_fraction
        )
        planned = Planned(cand, choice, fit, dtype, why, target, launch)
        if fit.fits:
            return planned
        fallback = fallback or planned
    if fallback is not None:
        return fallback
    assert first_error is not None
    raise first_error
