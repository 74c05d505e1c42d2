"""What a model keeps of its past, read from its config, and what each engine allocates for it.

Three families differ from "every layer keeps K and V of every token":
- MLA (kv_lora_rank): one compressed latent of kv_lora_rank + qk_rope_head_dim per layer and token;
- windowed layers (sliding_window with layer_types / sliding_window_pattern, or one model-wide
  window): a layer keeps only its window, where the engine's allocator supports it;
- linear-attention and state-space layers (Gated DeltaNet, Mamba): a fixed state per sequence.

The layout is read from fields, never from model names; what an engine does with each family is
data in recipes/serve_fit.toml ([kv.<backend>]). Pure functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

StateKind = Literal["mamba", "mamba2", "gated-delta-net"]
WindowRule = Literal["paged", "padded", "ratio", "full"]
StateDtype = Literal["model", "float32"]

_WINDOW_TYPES = ("sliding_attention", "sliding", "local", "local_attention")
_STATE_TYPES = ("linear_attention", "mamba", "mamba2", "linear")


@dataclass(frozen=True)
class StateShape:
    """Elements of one state layer's per-sequence state."""

    kind: StateKind
    conv: int  # the convolution's last kernel-1 inputs
    recurrent: int  # the recurrent (SSM / delta-rule) matrix
    recurrent_float32: bool = False  # the config says mamba_ssm_dtype float32 (Qwen3.5)


@dataclass(frozen=True)
class Layout:
    """How the layers of a model keep their past. Layers not windowed and not state are full."""

    layers: int
    window_layers: int = 0
    window: int = 0
    per_layer_windows: bool = False  # layer_types / a pattern, not one model-wide window
    mla_latent: int = 0  # kv_lora_rank + qk_rope_head_dim; 0: not MLA
    mla_expanded: int = 0  # heads x (qk_nope + qk_rope + v_head_dim): MLA decompressed
    state_layers: int = 0
    state: StateShape | None = None
    read_from: str = ""  # the config fields that decided it

    @property
    def full_layers(self) -> int:
        return self.layers - self.window_layers - self.state_layers


@dataclass(frozen=True)
class KvRules:
    """What one engine allocates for each family (recipes/serve_fit.toml [kv.<backend>])."""

    mla: Literal["latent", "expanded"]
    model_window: bool  # a window on every layer (no per-layer types) kept as a window
    window_rule: WindowRule  # per-layer windows
    window_block: int  # paged: block size; padded: the pad of the window cache
    window_ratio: float  # ratio: window-layer tokens per full-layer token
    window_architectures: tuple[str, ...]  # ratio: only these architectures; empty: any
    state_conv: StateDtype
    state_recurrent: StateDtype
    source: str


def load_kv_rules(data: dict[str, Any]) -> dict[str, KvRules]:
    return {
        name: KvRules(
            mla=r["mla"],
            model_window=bool(r["model_window"]),
            window_rule=r["window_rule"],
            window_block=int(r.get("window_block", 1)),
            window_ratio=float(r.get("window_ratio", 1.0)),
            window_architectures=tuple(r.get("window_architectures", ())),
            state_conv=r["state_conv"],
            state_recurrent=r["state_recurrent"],
            source=str(r["source"]),
        )
        for name, r in data.items()
    }


# ---------------------------------------------------------------- reading the config


def _pos_int(c: dict[str, Any], *keys: str) -> int | None:
    for k in keys:
        v = c.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def _types(c: dict[str, Any], layers: int, default_patterns: dict[str, int]) -> tuple[list[str] | None, str]:
    """Per-layer kinds ("full", "window", "state") and the field they came from, or None."""
    lt = c.get("layer_types") or c.get("layers_block_type")
    if isinstance(lt, list) and len(lt) == layers and all(isinstance(t, str) for t in lt):
        field = "layer_types" if c.get("layer_types") else "layers_block_type"
        return [
            "window" if t in _WINDOW_TYPES else "state" if t in _STATE_TYPES else "full" for t in lt
        ], field
    pattern = c.get("hybrid_override_pattern")  # Nemotron-H: M = Mamba2, * = attention, - = MLP
    if isinstance(pattern, str) and len(pattern) == layers:
        return ["state" if ch == "M" else "full" if ch == "*" else "none" for ch in pattern], (
            "hybrid_override_pattern"
        )
    interval = _pos_int(c, "full_attention_interval")
    if interval:  # Qwen3-Next: every interval-th layer attends, the rest are linear attention
        return ["full" if (i + 1) % interval == 0 else "state" for i in range(layers)], (
            f"full_attention_interval {interval}"
        )
    period, offset = _pos_int(c, "attn_layer_period"), c.get("attn_layer_offset")
    if period and isinstance(offset, int):  # Jamba: attention where i % period == offset
        return ["full" if i % period == offset else "state" for i in range(layers)], (
            f"attn_layer_period {period} / attn_layer_offset {offset}"
        )
    swp = _pos_int(c, "sliding_window_pattern")
    field = "sliding_window_pattern"
    if swp is None and c.get("model_type") in default_patterns:
        swp, field = default_patterns[str(c["model_type"])], f"{c['model_type']}'s default pattern"
    if swp and _pos_int(c, "sliding_window"):  # every swp-th layer global, the rest windowed
        return ["full" if (i + 1) % swp == 0 else "window" for i in range(layers)], f"{field} {swp}"
    return None, ""


def _state(c: dict[str, Any], hidden: int) -> StateShape | None:
    """The per-layer state of the linear-attention / SSM layers, from their own fields."""
    kh, vh = _pos_int(c, "linear_num_key_heads"), _pos_int(c, "linear_num_value_heads")
    kd, vd = _pos_int(c, "linear_key_head_dim"), _pos_int(c, "linear_value_head_dim")
    kernel = _pos_int(c, "linear_conv_kernel_dim")
    if kh and vh and kd and vd and kernel:  # Gated DeltaNet
        return StateShape("gated-delta-net", (2 * kh * kd + vh * vd) * (kernel - 1), vh * kd * vd)
    d_state = _pos_int(c, "mamba_d_state", "ssm_state_size", "state_size")
    d_conv = _pos_int(c, "mamba_d_conv", "conv_kernel")
    if not (d_state and d_conv):
        return None
    inner = _pos_int(c, "mamba_d_ssm") or (_pos_int(c, "mamba_expand", "expand") or 2) * hidden
    heads = _pos_int(c, "mamba_n_heads", "mamba_num_heads")
    head_dim = _pos_int(c, "mamba_d_head", "mamba_head_dim")
    if heads and head_dim:  # Mamba2: grouped B/C go through the convolution too
        groups = _pos_int(c, "mamba_n_groups", "n_groups") or 1
        return StateShape("mamba2", (inner + 2 * groups * d_state) * (d_conv - 1), heads * head_dim * d_state)
    return StateShape("mamba", inner * (d_conv - 1), inner * d_state)


def layout_from_config(
    c: dict[str, Any], layers: int, heads: int, hidden: int, defaults: dict[str, int]
) -> Layout | None:
    """The layout of a config's layers; None for plain full attention on every layer."""
    kv_lora = _pos_int(c, "kv_lora_rank")
    if kv_lora:
        rope = _pos_int(c, "qk_rope_head_dim") or 0
        nope = _pos_int(c, "qk_nope_head_dim") or 0
        v_dim = _pos_int(c, "v_head_dim") or nope + rope
        return Layout(
            layers,
            mla_latent=kv_lora + rope,
            mla_expanded=heads * (nope + rope + v_dim),
            read_from=f"kv_lora_rank {kv_lora} + qk_rope_head_dim {rope}",
        )
    kinds, field = _types(c, layers, defaults)
    window = _pos_int(c, "sliding_window")
    if c.get("use_sliding_window") is False:  # Qwen2's configs carry a window they do not use
        window = None
    if kinds is None:
        named = c.get("architecture_type")  # Xinference's registry metadata names it, without fields
        if window is None and named in ("mla", "hybrid_attention"):
            return Layout(
                layers, read_from=f"architecture_type {named} named without its fields: as full attention"
            )
        if window is None:
            return None
        return Layout(layers, window_layers=layers, window=window, read_from=f"sliding_window {window}")
    state = _state(c, hidden) if "state" in kinds else None
    if state is not None and c.get("mamba_ssm_dtype") == "float32":
        state = StateShape(state.kind, state.conv, state.recurrent, recurrent_float32=True)
    windowed = kinds.count("window") if window else 0
    return Layout(
        layers=sum(k != "none" for k in kinds),
        window_layers=windowed,
        window=window or 0,
        per_layer_windows=True,
        state_layers=kinds.count("state") if state else 0,
        state=state,
        read_from=field + (f", sliding_window {window}" if windowed else ""),
    )


def _gguf_state(d: dict[str, Any]) -> StateShape | None:
    """llama.cpp's recurrent state per layer (llama-hparams.cpp n_embd_r / n_embd_s): conv
    (d_conv - 1) x (d_inner + 2 x n_group x d_state), recurrent d_state x d_inner."""
    kernel, inner, d_state = (_pos_int(d, f"ssm.{k}") for k in ("conv_kernel", "inner_size", "state_size"))
    if not (kernel and inner and d_state):
        return None
    groups = _pos_int(d, "ssm.group_count") or 0
    kind: StateKind = "mamba2" if groups else "mamba"
    return StateShape(kind, (kernel - 1) * (inner + 2 * groups * d_state), d_state * inner)


def layout_from_gguf(d: dict[str, Any], arch: str, patterns: dict[str, int]) -> Layout | None:
    """From GGUF keys (arch prefix removed): MLA (kv_lora_rank); recurrent layers (a per-layer
    head_count_kv of 0, or full_attention_interval) with their ssm.* state; windowed layers
    (attention.sliding_window, with attention.sliding_window_pattern or the pattern llama.cpp's
    loader sets for the architecture)."""
    layers = _pos_int(d, "block_count")
    if not layers:
        return None
    kv_lora = _pos_int(d, "attention.kv_lora_rank")
    if kv_lora:
        rope = _pos_int(d, "rope.dimension_count") or 0
        return Layout(layers, mla_latent=kv_lora + rope, read_from=f"kv_lora_rank {kv_lora} + rope {rope}")
    kinds, fields = ["full"] * layers, []
    per_layer_kv = d.get("attention.head_count_kv")
    interval = _pos_int(d, "full_attention_interval")
    if isinstance(per_layer_kv, list) and len(per_layer_kv) == layers and 0 in per_layer_kv:
        kinds, fields = ["state" if h == 0 else "full" for h in per_layer_kv], ["head_count_kv per layer"]
    elif interval:
        kinds = ["full" if (i + 1) % interval == 0 else "state" for i in range(layers)]
        fields = [f"full_attention_interval {interval}"]
    window = _pos_int(d, "attention.sliding_window")
    pattern = d.get("attention.sliding_window_pattern")
    if window and isinstance(pattern, list) and len(pattern) == layers:
        sliding = [bool(x) for x in pattern]
    elif window and (isinstance(pattern, int) or arch in patterns):
        # llama.cpp set_swa_pattern(n): layer il is windowed when n == 0 or il % n < n - 1.
        n = pattern if isinstance(pattern, int) else patterns[arch]
        sliding = [n == 0 or i % n < n - 1 for i in range(layers)]
    else:
        sliding = [False] * layers  # no pattern known: counted whole
    kinds = ["window" if k == "full" and w else k for k, w in zip(kinds, sliding, strict=True)]
    if "window" in kinds:
        fields.append(f"sliding_window {window}")
    state = _gguf_state(d) if "state" in kinds else None
    if not fields or ("state" in kinds and state is None):
        return None
    return Layout(
        layers,
        window_layers=kinds.count("window"),
        window=window or 0,
        per_layer_windows=True,
        state_layers=kinds.count("state"),
        state=state,
        read_from=", ".join(fields),
    )


# ---------------------------------------------------------------- what an engine allocates


@dataclass(frozen=True)
class KvCache:
    """The KV cache (and recurrent state) of one sequence at one context, in bytes."""

    per_token: int  # what each token adds on the layers that keep every token
    windowed: int  # windowed layers at this context
    state: int  # per-sequence state of the linear-attention / SSM layers
    replicated: bool  # MLA's single latent head: every tensor-parallel rank holds all of it
    kv_heads: int
    context: int
    rule: str

    @property
    def total(self) -> int:
        return self.per_token * self.context + self.windowed + self.state

    def per_device(self, n: int) -> float:
        """Bytes on each of n tensor-parallel ranks: heads split (replicated below one per rank)."""
        if n <= 1:
            return float(self.total)
        attn = self.per_token * self.context + self.windowed
        share = 1.0 if self.replicated else max(self.kv_heads // n, 1) / self.kv_heads
        return attn * share + self.state / n


def _window_tokens(rules: KvRules, window: int, context: int, chunk: int) -> int:
    if rules.window_rule == "paged":
        # vLLM's SlidingWindowSpec: the last window-1 tokens plus one scheduled chunk, in blocks,
        # plus one block because the window need not start at a block boundary.
        blocks = math.ceil(min(window - 1 + chunk, context) / rules.window_block) + 1
        return blocks * rules.window_block
    if rules.window_rule == "padded":
        # llama.cpp's SWA cache: window x sequences (one) + n_ubatch, padded, at most n_ctx.
        return min(context, math.ceil((window + chunk) / rules.window_block) * rules.window_block)
    if rules.window_rule == "ratio":
        return math.ceil(context * rules.window_ratio)
    return context


def kv_cache(
    layout: Layout | None,
    kv_heads: int,
    head_dim: int,
    layers: int,
    rules: KvRules,
    kv_bytes: int,
    context: int,
    chunk: int,
    architectures: tuple[str, ...] = (),
) -> KvCache:
    """The cache one sequence of `context` tokens needs in this engine, and the rule that applied."""
    per_layer = kv_heads * head_dim * 2 * kv_bytes  # K and V
    if layout is None:
        return KvCache(
            layers * per_layer,
            0,
            0,
            False,
            kv_heads,
            context,
            f"every layer keeps K and V of every token ({layers} layers x {kv_heads} KV heads x {head_dim})",
        )
    if layout.mla_latent:
        width = layout.mla_latent if rules.mla == "latent" else layout.mla_expanded
        what = (
            f"the compressed latent ({layout.read_from} = {width})"
            if rules.mla == "latent"
            else f"K and V decompressed ({width} per token)"
        )
        return KvCache(
            layout.layers * width * kv_bytes,
            0,
            0,
            rules.mla == "latent",
            kv_heads,
            context,
            f"MLA: {layout.layers} layers keep {what}",
        )
    full = layout.full_layers
    parts = [f"{full} full layers keep every token"] if full else []
    windowed = 0
    if layout.window_layers:
        supported = layout.per_layer_windows or rules.model_window
        if rules.window_rule == "ratio" and rules.window_architectures:
            supported = supported and any(a in rules.window_architectures for a in architectures)
        if layout.window >= context:  # the window holds the whole context anyway
            full += layout.window_layers
            parts.append(f"{layout.window_layers} windowed layers' window {layout.window} >= the context")
        elif supported and rules.window_rule != "full":
            tokens = min(_window_tokens(rules, layout.window, context, chunk), context)
            windowed = layout.window_layers * per_layer * tokens
            parts.append(
                f"{layout.window_layers} windowed layers keep {tokens} tokens (window {layout.window})"
            )
        else:
            full += layout.window_layers
            parts.append(
                f"{layout.window_layers} windowed layers keep every token too "
                "(this engine's cache does not window them)"
            )
    state = 0
    if layout.state is not None and layout.state_layers:
        conv = kv_bytes if rules.state_conv == "model" else 4
        rec = kv_bytes if rules.state_recurrent == "model" and not layout.state.recurrent_float32 else 4
        state = layout.state_layers * (layout.state.conv * conv + layout.state.recurrent * rec)
        parts.append(
            f"{layout.state_layers} {layout.state.kind} layers keep a fixed "
            f"{state / 2**20:.0f} MiB state per sequence"
        )
    return KvCache(
        full * per_layer,
        windowed,
        state,
        False,
        kv_heads,
        context,
        f"{'; '.join(parts)} (from {layout.read_from})",
    )
