"""Will the model fit, on how many GPUs, with how much context: a pure function of the model's
shape and size, the engine and the memory of the devices.

need = weights (in the dtype or quantization they run in)
     + KV cache for the context, as the engine allocates it for the model's attention
       (serve/attention.py: full layers x KV heads x head dim x 2 x bytes x tokens; MLA's latent;
       windowed layers' window; linear-attention / SSM layers' fixed state)
     + activations of one prefill chunk + a fixed runtime overhead per device,
against the devices' memory x the engine's share of it (recipes/serve_fit.toml), or RAM on CPU.

The context starts at the model's own maximum (or --max-model-len) and is lowered only as
far as memory forces, in whole KV blocks; the reason says so. vLLM and SGLang span GPUs by
tensor parallelism (a power of two dividing the attention heads); transformers
(device_map="auto") and llama.cpp (layer split) by placing layers, so any count (the recipe's
`spans` says which).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

from provision.serve.attention import (
    KvCache,
    KvRules,
    Layout,
    kv_cache,
    layout_from_config,
    layout_from_gguf,
    load_kv_rules,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GIB = 1024**3
EngineKind = Literal["vllm", "sglang", "transformers", "llama-cpp"]
TargetKind = Literal["cuda", "metal", "cpu"]
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def engine_kind(engine: str) -> EngineKind:
    """A plan backend name as the fit knows it: both llama.cpp bindings size memory alike."""
    if engine in ("xllamacpp", "llama-cpp-python"):
        return "llama-cpp"
    if engine in ("vllm", "sglang", "transformers"):
        return engine  # type: ignore[return-value]
    raise ValueError(f"no memory facts for engine {engine}")


@dataclass(frozen=True)
class ModelShape:
    """What the memory of a transformer decoder depends on, read from the model's metadata."""

    layers: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int  # per expert for a mixture of experts
    vocab: int
    max_context: int | None
    active_experts: int = 1
    torch_dtype: str | None = None
    layout: Layout | None = None  # None: every layer keeps K and V of every token
    architectures: tuple[str, ...] = ()


def _int(d: dict[str, Any], *keys: str) -> int | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def shape_from_config(config: dict[str, Any]) -> ModelShape | None:
    """From a Hugging Face config.json (a multimodal model's text_config when it has one).
    None when it lacks what the estimate needs."""
    text = config.get("text_config")
    c: dict[str, Any] = text if isinstance(text, dict) else config
    layers = _int(c, "num_hidden_layers", "n_layer", "num_layers")
    heads = _int(c, "num_attention_heads", "n_head")
    hidden = _int(c, "hidden_size", "n_embd", "d_model")
    if not (layers and heads and hidden):
        return None
    dtype = c.get("torch_dtype") or c.get("dtype") or config.get("torch_dtype") or config.get("dtype")
    arches = config.get("architectures")
    return ModelShape(
        layers=layers,
        attention_heads=heads,
        kv_heads=_int(c, "num_key_value_heads", "num_kv_heads") or (1 if c.get("multi_query") else heads),
        head_dim=_int(c, "head_dim") or hidden // heads,
        hidden=hidden,
        intermediate=_int(c, "intermediate_size", "n_inner", "ffn_dim") or 4 * hidden,
        vocab=_int(c, "vocab_size", "padded_vocab_size") or 32000,
        max_context=_int(c, "max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"),
        active_experts=_int(c, "num_experts_per_tok", "moe_topk") or 1,
        torch_dtype=str(dtype) if dtype else None,
        layout=layout_from_config(
            c, layers, heads, hidden, _default_window_patterns("default_window_pattern")
        ),
        architectures=tuple(a for a in arches if isinstance(a, str)) if isinstance(arches, list) else (),
    )


@cache
def _default_window_patterns(table: str) -> dict[str, int]:
    """recipes/serve_fit.toml's window patterns for configs (by model_type) or GGUFs (by arch)."""
    data = tomllib.loads(resources.files("provision.recipes").joinpath("serve_fit.toml").read_text("utf-8"))
    return {k: int(v) for k, v in data[table].items()}


def shape_from_gguf(meta: dict[str, Any]) -> ModelShape | None:
    """From GGUF metadata (`<arch>.block_count`, `<arch>.attention.head_count`, ...)."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return None
    d = {k.removeprefix(f"{arch}."): v for k, v in meta.items() if k.startswith(f"{arch}.")}
    layers, heads, hidden = (
        _int(d, "block_count"),
        _int(d, "attention.head_count"),
        _int(d, "embedding_length"),
    )
    if not (layers and heads and hidden):
        return None
    tokens = meta.get("tokenizer.ggml.tokens")
    per_layer_kv = d.get("attention.head_count_kv")  # a list where layers differ (0: recurrent)
    if isinstance(per_layer_kv, list):
        d = {**d, "attention.head_count_kv": max((h for h in per_layer_kv if isinstance(h, int)), default=0)}
    return ModelShape(
        layers=layers,
        attention_heads=heads,
        kv_heads=_int(d, "attention.head_count_kv") or heads,
        head_dim=_int(d, "attention.key_length") or hidden // heads,
        hidden=hidden,
        intermediate=_int(d, "feed_forward_length", "expert_feed_forward_length") or 4 * hidden,
        vocab=_int(d, "vocab_size") or (len(tokens) if isinstance(tokens, list) else 32000),
        max_context=_int(d, "context_length"),
        active_experts=_int(d, "expert_used_count") or 1,
        layout=layout_from_gguf(
            {k.removeprefix(f"{arch}."): v for k, v in meta.items() if k.startswith(f"{arch}.")},
            arch,
            _default_window_patterns("gguf_window_pattern"),
        ),
    )


def shape_from_registry(metadata: dict[str, Any], context_length: int | None) -> ModelShape | None:
    """From an Xinference registry spec's model_metadata (its keys are config.json's)."""
    shape = shape_from_config(metadata)
    if shape is None:
        return None
    return ModelShape(**{**shape.__dict__, "max_context": context_length or shape.max_context})


# ---------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class EngineMemory:
    memory_fraction: float
    overhead_gib: float
    prefill_chunk: int  # 0: the whole context in one pass
    tensor_parallel: bool  # spans GPUs by tensor parallelism (else by placing layers)


@dataclass(frozen=True)
class FitFacts:
    engines: dict[str, EngineMemory]
    cpu_memory_fraction: float
    metal_memory_fraction: float
    min_context: int
    context_step: int
    bits_per_weight: dict[str, float]
    kv: dict[str, KvRules]  # by backend name; the llama.cpp bindings differ

    def kv_rules(self, backend: str) -> KvRules:
        return self.kv[backend]

    def bits(self, quantization: str) -> float | None:
        wanted = quantization.lower()
        return next((v for k, v in self.bits_per_weight.items() if k.lower() == wanted), None)


def load_fit_facts() -> FitFacts:
    data = tomllib.loads(resources.files("provision.recipes").joinpath("serve_fit.toml").read_text("utf-8"))
    host = data["host"]
    return FitFacts(
        engines={
            name: EngineMemory(
                float(e["memory_fraction"]),
                float(e["overhead_gib"]),
                int(e["prefill_chunk"]),
                e["spans"] == "tensor-parallel",
            )
            for name, e in data["engines"].items()
        },
        cpu_memory_fraction=float(host["cpu_memory_fraction"]),
        metal_memory_fraction=float(host["metal_memory_fraction"]),
        min_context=int(host["min_context"]),
        context_step=int(host["context_step"]),
        bits_per_weight={k: float(v) for k, v in data["bits_per_weight"].items()},
        kv=load_kv_rules(data["kv"]),
    )


# ---------------------------------------------------------------- the decision


@dataclass(frozen=True)
class Device:
    name: str
    memory_gib: float
    index: int | None = None


@dataclass(frozen=True)
class Target:
    """Where the model runs: CUDA GPUs (those selected), Apple's Metal GPU, or the CPU."""

    kind: TargetKind
    devices: tuple[Device, ...] = ()
    ram_gib: float | None = None


@dataclass(frozen=True)
class FitInput:
    weights_bytes: int  # in the dtype / quantization the engine runs them in
    shape: ModelShape
    engine: EngineKind
    kv_bytes: int  # bytes per KV element: 2 for an f16/bf16 cache, 4 for f32
    act_bytes: int  # bytes per activation element
    requested_context: int | None = None  # --max-model-len
    memory_fraction: float | None = None  # --gpu-memory-fraction
    backend: str | None = None  # the plan backend (xllamacpp, llama-cpp-python, ...); None: engine


@dataclass(frozen=True)
class Fit:
    weights_gib: float
    kv_cache_gib: float
    overhead_gib: float  # activations + runtime, all devices
    need_gib: float
    have_gib: float
    devices: int  # GPUs spanned (0 on CPU; 1 for Metal)
    context_length: int
    fits: bool
    reason: str
    tensor_parallel: int = 1  # the tensor-parallel size the launch uses (1: not tensor parallel)
    kv_rule: str = ""  # which KV rule applied (serve/attention.py)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights_gib": round(self.weights_gib, 2),
            "kv_cache_gib": round(self.kv_cache_gib, 2),
            "need_gib": round(self.need_gib, 2),
            "have_gib": round(self.have_gib, 2),
            "devices": self.devices,
            "context_length": self.context_length,
            "fits": self.fits,
            "tensor_parallel": self.tensor_parallel,
            "kv_rule": self.kv_rule,
        }


def _activation_bytes(inp: FitInput, eng: EngineMemory, context: int) -> float:
    chunk = context if eng.prefill_chunk == 0 else min(context, eng.prefill_chunk)
    s = inp.shape
    return chunk * (4 * s.hidden + 2 * s.intermediate * s.active_experts) * inp.act_bytes


def _kv(inp: FitInput, facts: FitFacts, context: int) -> KvCache:
    s, eng = inp.shape, facts.engines[inp.engine]
    chunk = context if eng.prefill_chunk == 0 else eng.prefill_chunk
    rules = facts.kv.get(inp.backend or "") or facts.kv_rules(inp.engine)  # a backend's own, else its kind's
    return kv_cache(
        s.layout, s.kv_heads, s.head_dim, s.layers, rules, inp.kv_bytes, context, chunk, s.architectures
    )


def _tensor_parallel(inp: FitInput, facts: FitFacts, target: Target) -> bool:
    return target.kind == "cuda" and facts.engines[inp.engine].tensor_parallel


def _parts(
    inp: FitInput, facts: FitFacts, target: Target, context: int, n: int
) -> tuple[float, float, float]:
    """(weights, kv, overhead) in bytes over all n devices (n=0: the CPU). Under tensor
    parallelism the KV counts what every rank holds: MLA's latent, and KV heads fewer than the
    ranks, are replicated rather than split."""
    eng = facts.engines[inp.engine]
    cache = _kv(inp, facts, context)
    kv = cache.per_device(n) * n if _tensor_parallel(inp, facts, target) else float(cache.total)
    overhead = _activation_bytes(inp, eng, context) + eng.overhead_gib * GIB * max(n, 1)
    return float(inp.weights_bytes), kv, overhead


def _usable(target: Target, facts: FitFacts, eng: EngineMemory, fraction: float | None, n: int) -> float:
    """Usable bytes on the first n devices (the CPU: RAM)."""
    if target.kind == "cpu":
        return (target.ram_gib or 0.0) * facts.cpu_memory_fraction * GIB
    if target.kind == "metal":
        return target.devices[0].memory_gib * facts.metal_memory_fraction * GIB
    share = fraction if fraction is not None else eng.memory_fraction
    return sum(d.memory_gib for d in target.devices[:n]) * share * GIB


def device_counts(inp: FitInput, target: Target, facts: FitFacts) -> list[int]:
    """How many GPUs the engine may span, fewest first."""
    if target.kind == "cpu":
        return [0]
    if target.kind == "metal":
        return [1]
    total = len(target.devices)
    if facts.engines[inp.engine].tensor_parallel:
        counts = [2**k for k in range(total.bit_length()) if 2**k <= total]
        return [n for n in counts if inp.shape.attention_heads % n == 0] or [1]
    return list(range(1, total + 1))


def _fits_at(inp: FitInput, target: Target, facts: FitFacts, context: int, n: int) -> bool:
    eng = facts.engines[inp.engine]
    w, kv, ov = _parts(inp, facts, target, context, n)
    usable = _usable(target, facts, eng, inp.memory_fraction, n)
    if _tensor_parallel(inp, facts, target):
        # Tensor parallelism splits weights and KV evenly; every GPU carries its own overhead.
        per_gpu = (w + kv + ov - eng.overhead_gib * GIB * n) / n + eng.overhead_gib * GIB
        return per_gpu <= usable / n
    return w + kv + ov <= usable


def _largest_context(inp: FitInput, target: Target, facts: FitFacts, n: int, top: int) -> int:
    """The largest context (a multiple of the block step, at most top) that fits on n devices; 0: none."""
    step = facts.context_step
    lo, hi = 0, top // step
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _fits_at(inp, target, facts, mid * step, n):
            lo = mid
        else:
            hi = mid - 1
    return lo * step


def _result(
    inp: FitInput, target: Target, facts: FitFacts, context: int, n: int, fits: bool, reason: str
) -> Fit:
    eng = facts.engines[inp.engine]
    w, kv, ov = _parts(inp, facts, target, context, n)
    have = _usable(target, facts, eng, inp.memory_fraction, n)
    tp = n if _tensor_parallel(inp, facts, target) and n > 1 else 1
    rule = _kv(inp, facts, context).rule
    return Fit(
        w / GIB, kv / GIB, ov / GIB, (w + kv + ov) / GIB, have / GIB, n, context, fits, reason, tp, rule
    )


def _where(target: Target, n: int) -> str:
    if target.kind == "cpu":
        return f"{target.ram_gib or 0:.0f} GiB RAM"
    if target.kind == "metal":
        return f"{target.devices[0].name} ({target.devices[0].memory_gib:.0f} GiB unified)"
    names = {d.name for d in target.devices[:n]}
    return f"{n} x {'/'.join(sorted(names))}" if n > 1 else target.devices[0].name


def fit_model(inp: FitInput, target: Target, facts: FitFacts) -> Fit:
    eng = facts.engines[inp.engine]
    model_max = inp.shape.max_context
    wanted = inp.requested_context or model_max or facts.min_context
    why_ctx = (
        "--max-model-len"
        if inp.requested_context
        else "the model's maximum"
        if model_max
        else "a default (the model states no maximum)"
    )
    if target.kind == "cuda" and not target.devices:
        raise ValueError("a CUDA target needs devices")
    counts = device_counts(inp, target, facts)
    share = inp.memory_fraction if inp.memory_fraction is not None else eng.memory_fraction
    spread = "tensor parallel" if eng.tensor_parallel else "layers placed across them"
    for n in counts:
        if _fits_at(inp, target, facts, wanted, n):
            if target.kind == "cuda":
                span = f"on {_where(target, n)} ({spread})" if n > 1 else f"on one {_where(target, n)}"
                place = f"{span} at {share:.0%} of GPU memory"
            else:
                place = f"in {_where(target, n)}"
            fit = _result(inp, target, facts, wanted, n, True, "")
            return _with_reason(
                fit,
                f"fits {place}: needs {fit.need_gib:.1f} GiB of {fit.have_gib:.1f} GiB; "
                f"context {wanted} ({why_ctx}); KV cache: {fit.kv_rule}",
            )
    n = counts[-1]
    lowered = _largest_context(inp, target, facts, n, wanted)
    floor = min(facts.min_context, wanted)
    if lowered >= floor:
        fit = _result(inp, target, facts, lowered, n, True, "")
        whole = _result(inp, target, facts, wanted, n, False, "")
        return _with_reason(
            fit,
            f"fits on {_where(target, n)} only with the context lowered from {wanted} "
            f"({why_ctx}) to {lowered}: at {wanted} tokens it would need {_breakdown(whole)}, "
            f"{fit.have_gib:.1f} GiB usable; KV cache: {fit.kv_rule}",
        )
    fit = _result(inp, target, facts, wanted, n, False, "")
    at_floor = _result(inp, target, facts, floor, n, False, "")
    return _with_reason(
        fit,
        f"does not fit: at {wanted} tokens it needs {_breakdown(fit)}, and "
        f"{at_floor.need_gib:.1f} GiB even at {floor} tokens; "
        f"{_where(target, n)} has {fit.have_gib:.1f} GiB usable; KV cache: {fit.kv_rule}. "
        f"{suggestion(inp, target)}",
    )


def _breakdown(fit: Fit) -> str:
    """The whole need and its parts, so that no part is read as the whole."""
    return (
        f"{fit.need_gib:.1f} GiB in all (weights {fit.weights_gib:.1f}, KV cache "
        f"{fit.kv_cache_gib:.1f}, activations and runtime {fit.overhead_gib:.1f})"
    )


def suggestion(inp: FitInput, target: Target) -> str:
    tips = ["a quantized spec (--quantization, or a GGUF)"]
    if target.kind == "cuda":
        tips.append("more GPUs")
    tips.append("a shorter --max-model-len")
    return "Try " + ", ".join(tips[:-1]) + " or " + tips[-1] + (" (or --force to launch anyway)")


def _with_reason(fit: Fit, reason: str) -> Fit:
    return Fit(**{**fit.__dict__, "reason": reason})


def weights_for_params(params: float, quantization: str, facts: FitFacts) -> int | None:
    """Bytes of weights stored at the quantization's bits per weight (registry specs before download)."""
    bits = facts.bits(quantization)
    return None if bits is None else math.ceil(params * bits / 8)
