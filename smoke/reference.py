"""The tiny model computed by hand in numpy (float64): the answer every engine must give.

A 2-layer llama forward is a few matrix products, so instead of trusting any engine we
compute the greedy continuation ourselves from the files on disk (safetensors + tokenizer).
Engines running the model in float32 must reproduce these token ids exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from provision.tiny_model import IM_END, IM_START


def chatml_prompt(user_message: str) -> str:
    """The tiny model's chat template rendered for one user turn (see tiny_model.CHAT_TEMPLATE)."""
    return f"{IM_START}user\n{user_message}{IM_END}\n{IM_START}assistant\n"


@dataclass(frozen=True)
class Greedy:
    prompt_ids: list[int]
    new_ids: list[int]
    prompt_logits: np.ndarray  # [len(prompt_ids), vocab]


class TinyReference:
    def __init__(self, hf_dir: Path):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.config = json.loads((hf_dir / "config.json").read_text())
        tensors = load_file(str(hf_dir / "model.safetensors"))
        self.weights = {k: v.astype(np.float64) for k, v in tensors.items()}
        self.tokenizer = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
        self.eos_id = int(self.config["eos_token_id"])

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of ids, [len(ids), vocab]; no cache, the model is tiny."""
        c, w = self.config, self.weights
        n_heads, n_kv, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        eps = c["rms_norm_eps"]
        x = w["model.embed_tokens.weight"][ids]
        cos, sin = _rope_tables(len(ids), d, c["rope_theta"])
        causal = np.triu(np.full((len(ids), len(ids)), -np.inf), k=1)
        for layer in range(c["num_hidden_layers"]):
            p = f"model.layers.{layer}."
            h = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
            q = _heads(h @ w[p + "self_attn.q_proj.weight"].T, n_heads, d)
            k = _heads(h @ w[p + "self_attn.k_proj.weight"].T, n_kv, d)
            v = _heads(h @ w[p + "self_attn.v_proj.weight"].T, n_kv, d)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            group = n_heads // n_kv
            k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(d) + causal
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            attn = (scores / scores.sum(axis=-1, keepdims=True)) @ v  # [heads, n, d]
            attn = attn.transpose(1, 0, 2).reshape(len(ids), n_heads * d)
            x = x + attn @ w[p + "self_attn.o_proj.weight"].T
            h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            up = h @ w[p + "mlp.up_proj.weight"].T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
        return _rms_norm(x, w["model.norm.weight"], eps) @ w["lm_head.weight"].T

    def encode_chat(self, user_message: str) -> list[int]:
        return self.encode(chatml_prompt(user_message))

    def greedy(self, prompt_ids: list[int], new_tokens: int) -> Greedy:
        """Exactly new_tokens greedy tokens (EOS included, as engines do when told to ignore it)."""
        ids = list(prompt_ids)
        prompt_logits = None
        for _ in range(new_tokens):
            logits = self.logits(ids)
            if prompt_logits is None:
                prompt_logits = logits
            ids.append(int(np.argmax(logits[-1])))
        if prompt_logits is None:
            raise ValueError("greedy() needs new_tokens >= 1")
        return Greedy(list(prompt_ids), ids[len(prompt_ids) :], prompt_logits)

    def chat_text(self, greedy: Greedy) -> str:
        """What a server answers for that continuation: the text before EOS, which stops it."""
        new_ids = greedy.new_ids
        if self.eos_id in new_ids:
            new_ids = new_ids[: new_ids.index(self.eos_id)]
        return self.decode(new_ids)


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _heads(x: np.ndarray, n: int, d: int) -> np.ndarray:
    return x.reshape(x.shape[0], n, d).transpose(1, 0, 2)


def _rope_tables(n: int, d: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    angles = np.outer(np.arange(n, dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """HF's half-split rotary embedding: pairs (j, j + d/2) rotate together."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
