"""A tiny llama model made here, offline and deterministic, for smoke tests of every engine.

One set of seeded weights is written twice: as a Hugging Face directory (safetensors,
tokenizer.json, chat template) for transformers / vLLM / SGLang, and as an F32 GGUF
carrying the same weights, the tokenizer and the chat template for llama.cpp engines.
Results are cached under a key that hashes every input (spec, corpus, generator and
library versions), so a second call costs a few file hashes.

Shape choices: head_dim 64 because GPU attention kernels (FlashAttention, FlashInfer)
accept 64 but not 16; GQA (2 query heads, 1 KV head) so engines exercise their grouped
path; every dimension a multiple of 32 so the GGUF could be block-quantised.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from provision import paths
from provision.errors import OperationFailed

# Bump when the bytes this module writes change for the same spec.
GENERATOR_VERSION = 1

CORPUS_PATH = Path(__file__).with_name("data") / "corpus.txt"

BOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (BOS_TOKEN, IM_START, IM_END)

# ChatML: llama.cpp recognises it both as Jinja and by its markers.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

GGUF_F32_NAME = "tiny-llama-f32.gguf"
HF_DIR_NAME = "hf"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class TinySpec:
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    vocab_target: int = 1024  # BPE training stops earlier on a small corpus; the real size is recorded
    context_length: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    seed: int = 20240601

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class TinyModel:
    hf_dir: Path
    gguf_path: Path
    key: str
    vocab_size: int
    spec: TinySpec
    generated: bool  # False when it came from the cache
    generate_s: float  # time spent generating (0 on a cache hit)

    @property
    def hf_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.hf_dir.iterdir() if p.is_file())

    @property
    def gguf_bytes(self) -> int:
        return self.gguf_path.stat().st_size

    @property
    def eos_token(self) -> str:
        return IM_END


class TinyModelError(OperationFailed):
    pass


def default_cache_dir() -> Path:
    return paths.models_cache()


def cache_key(spec: TinySpec, corpus: str) -> str:
    """Hash of everything that decides the output bytes."""
    inputs = {
        "generator": GENERATOR_VERSION,
        "spec": asdict(spec),
        "corpus_sha256": hashlib.sha256(corpus.encode()).hexdigest(),
        "gguf": metadata.version("gguf"),
        "tokenizers": metadata.version("tokenizers"),
        "numpy": np.__version__.split(".")[0],
    }
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def ensure_tiny_model(cache_dir: Path | None = None, spec: TinySpec | None = None) -> TinyModel:
    """The tiny model, from the cache when its files are intact, else generated into it."""
    spec = spec or TinySpec()
    corpus = CORPUS_PATH.read_text(encoding="utf-8")
    key = cache_key(spec, corpus)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / key
    cached = _load_cached(target, key, spec)
    if cached is not None:
        return cached
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Built beside the target and renamed in, so a reader never sees half a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        vocab_size = write_model(staging, spec, corpus)
        _write_manifest(staging, key, vocab_size)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    elapsed = time.perf_counter() - started
    return TinyModel(target / HF_DIR_NAME, target / GGUF_F32_NAME, key, vocab_size, spec, True, elapsed)


def write_model(out_dir: Path, spec: TinySpec, corpus: str) -> int:
    """Write the HF directory and the GGUF under out_dir; returns the vocabulary size."""
    tokenizer = train_tokenizer(corpus, spec.vocab_target)
    vocab_size = tokenizer.get_vocab_size()
    weights = make_weights(spec, vocab_size)
    hf_dir = out_dir / HF_DIR_NAME
    hf_dir.mkdir(parents=True)
    write_hf_dir(hf_dir, spec, weights, tokenizer)
    write_gguf(out_dir / GGUF_F32_NAME, spec, weights, tokenizer)
    return vocab_size


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(corpus: str, vocab_target: int):
    """Byte-level BPE with GPT-2's pre-tokenizer, which llama.cpp knows as pre="gpt-2"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    return tok


def vocab_in_id_order(tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = [""] * len(vocab)
    for text, idx in vocab.items():
        tokens[idx] = text
    if "" in tokens:
        raise TinyModelError("tokenizer ids are not contiguous")
    return tokens


def merges_of(tokenizer) -> list[str]:
    """Merges as llama.cpp wants them, "left right"; tokenizers >= 0.20 stores pairs as lists."""
    raw = json.loads(tokenizer.to_str())["model"]["merges"]
    return [m if isinstance(m, str) else " ".join(m) for m in raw]


# ---------------------------------------------------------------- weights


def make_weights(spec: TinySpec, vocab_size: int) -> dict[str, np.ndarray]:
    """Seeded float32 weights under Hugging Face Llama names, [out, in] like torch Linear."""
    rng = np.random.default_rng(spec.seed)
    h, i, d = spec.hidden_size, spec.intermediate_size, spec.head_dim
    kv = spec.num_kv_heads * d

    def linear(out_f: int, in_f: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((out_f, in_f)) * gain / np.sqrt(in_f)).astype(np.float32)

    def norm() -> np.ndarray:
        # Not all ones, so a converter that drops or swaps norms shows up in the logits.
        return (1.0 + 0.1 * rng.standard_normal(h)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((vocab_size, h)).astype(np.float32)}
    for layer in range(spec.num_layers):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = norm()
        w[p + "self_attn.q_proj.weight"] = linear(spec.num_heads * d, h)
        w[p + "self_attn.k_proj.weight"] = linear(kv, h)
        w[p + "self_attn.v_proj.weight"] = linear(kv, h)
        w[p + "self_attn.o_proj.weight"] = linear(h, spec.num_heads * d)
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "mlp.gate_proj.weight"] = linear(i, h)
        w[p + "mlp.up_proj.weight"] = linear(i, h)
        w[p + "mlp.down_proj.weight"] = linear(h, i)
    w["model.norm.weight"] = norm()
    # Gain 3 spreads the logits so greedy choices are not near-ties that rounding could flip.
    w["lm_head.weight"] = linear(vocab_size, h, gain=3.0)
    return w


def rotary_to_llama_cpp(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k rows from HF's half-split rotary layout to llama.cpp's interleaved pairs.

    HF rotates (x[j], x[j + d/2]); llama.cpp's LLAMA rope rotates (x[2j], x[2j + 1]).
    Per head, row j of the first half goes to 2j and row j of the second half to 2j + 1.
    """
    rows, cols = weight.shape
    d = rows // n_heads
    halves = weight.reshape(n_heads, 2, d // 2, cols)
    return halves.transpose(0, 2, 1, 3).reshape(rows, cols)


# ---------------------------------------------------------------- writers


def write_hf_dir(hf_dir: Path, spec: TinySpec, weights: dict[str, np.ndarray], tokenizer) -> None:
    from safetensors.numpy import save_file

    vocab = tokenizer.get_vocab()
    bos_id, eos_id = vocab[BOS_TOKEN], vocab[IM_END]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.context_length,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope_theta,
        "vocab_size": tokenizer.get_vocab_size(),
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": bos_id,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": IM_END,
        "pad_token": BOS_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": spec.context_length,
        "chat_template": CHAT_TEMPLATE,
    }
    generation_config = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": bos_id}
    special_tokens_map = {"bos_token": BOS_TOKEN, "eos_token": IM_END, "pad_token": BOS_TOKEN}

    save_file(weights, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(str(hf_dir / "tokenizer.json"))
    for name, data in (
        ("config.json", config),
        ("tokenizer_config.json", tokenizer_config),
        ("generation_config.json", generation_config),
        ("special_tokens_map.json", special_tokens_map),
    ):
        (hf_dir / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (hf_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")


# HF tensor name (after "model.layers.N.") -> GGUF tensor name (after "blk.N.").
_GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GGUF_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_tensors(spec: TinySpec, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The GGUF view of the same weights: llama.cpp names, q/k rows in its rotary order."""
    out = {}
    for name, array in weights.items():
        if name in _GGUF_TOP_NAMES:
            out[_GGUF_TOP_NAMES[name]] = array
            continue
        _, _, layer, rest = name.split(".", 3)
        if rest == "self_attn.q_proj.weight":
            array = rotary_to_llama_cpp(array, spec.num_heads)
        elif rest == "self_attn.k_proj.weight":
            array = rotary_to_llama_cpp(array, spec.num_kv_heads)
        out[f"blk.{layer}.{_GGUF_LAYER_NAMES[rest]}"] = array
    return out


def write_gguf(path: Path, spec: TinySpec, weights: dict[str, np.ndarray], tokenizer) -> None:
    import gguf

    tokens = vocab_in_id_order(tokenizer)
    special = set(SPECIAL_TOKENS)
    vocab = tokenizer.get_vocab()

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("xinfer-setup tiny llama")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(len(tokens))
    w.add_context_length(spec.context_length)
    w.add_embedding_length(spec.hidden_size)
    w.add_block_count(spec.num_layers)
    w.add_feed_forward_length(spec.intermediate_size)
    w.add_head_count(spec.num_heads)
    w.add_head_count_kv(spec.num_kv_heads)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_rope_freq_base(spec.rope_theta)
    w.add_layer_norm_rms_eps(spec.rms_norm_eps)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges_of(tokenizer))
    w.add_bos_token_id(vocab[BOS_TOKEN])
    w.add_eos_token_id(vocab[IM_END])
    w.add_pad_token_id(vocab[BOS_TOKEN])
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    for name, array in gguf_tensors(spec, weights).items():
        w.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------- cache


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_of(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def _write_manifest(model_dir: Path, key: str, vocab_size: int) -> None:
    files = {str(p.relative_to(model_dir)): _sha256(p) for p in _files_of(model_dir)}
    manifest = {"key": key, "vocab_size": vocab_size, "files": files}
    (model_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _load_cached(model_dir: Path, key: str, spec: TinySpec) -> TinyModel | None:
    """The cached model when every file is there with the hash the manifest recorded."""
    try:
        manifest = json.loads((model_dir / MANIFEST_NAME).read_text())
        files = manifest["files"]
        present = {str(p.relative_to(model_dir)) for p in _files_of(model_dir)}
        if manifest.get("key") != key or present != set(files):
            return None
        if any(_sha256(model_dir / rel) != digest for rel, digest in files.items()):
            return None
        vocab_size = int(manifest["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return TinyModel(model_dir / HF_DIR_NAME, model_dir / GGUF_F32_NAME, key, vocab_size, spec, False, 0.0)
