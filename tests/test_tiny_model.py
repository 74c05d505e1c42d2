"""The tiny model factory: deterministic bytes, a content-keyed cache, a GGUF that carries the
same weights (in llama.cpp's rotary layout), the tokenizer and the chat template."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from provision.tiny_model import (
    CHAT_TEMPLATE,
    IM_END,
    TinySpec,
    ensure_tiny_model,
    gguf_tensors,
    rotary_to_llama_cpp,
)
from smoke.reference import TinyReference, chatml_prompt


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return ensure_tiny_model(tmp_path_factory.mktemp("models"))


def _all_files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_byte_identical_across_runs(model, tmp_path):
    again = ensure_tiny_model(tmp_path)
    assert again.generated and again.key == model.key
    assert _all_files(again.hf_dir.parent) == _all_files(model.hf_dir.parent)


def test_cache_hit_and_sizes(model):
    assert model.generated and model.generate_s > 0
    hit = ensure_tiny_model(model.hf_dir.parent.parent)
    assert not hit.generated and hit.generate_s == 0.0
    assert hit.gguf_path == model.gguf_path
    # "A few MB": both forms are small, and the F32 GGUF holds the same float count as safetensors.
    assert 1_000_000 < model.gguf_bytes < 10_000_000
    assert abs(model.gguf_bytes - (model.hf_dir / "model.safetensors").stat().st_size) < 100_000


def test_corrupt_cache_is_regenerated(tmp_path):
    first = ensure_tiny_model(tmp_path)
    good = first.gguf_path.read_bytes()
    first.gguf_path.write_bytes(good[: len(good) // 2])
    again = ensure_tiny_model(tmp_path)
    assert again.generated
    assert again.gguf_path.read_bytes() == good


def test_spec_change_changes_key(tmp_path):
    a = ensure_tiny_model(tmp_path)
    b = ensure_tiny_model(tmp_path, TinySpec(seed=7))
    assert a.key != b.key
    assert a.gguf_path.read_bytes() != b.gguf_path.read_bytes()


def test_hf_dir_is_complete(model):
    config = json.loads((model.hf_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_key_value_heads"] < config["num_attention_heads"]
    assert config["vocab_size"] == model.vocab_size
    tok_config = json.loads((model.hf_dir / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == CHAT_TEMPLATE and tok_config["eos_token"] == IM_END
    assert (model.hf_dir / "chat_template.jinja").read_text() == CHAT_TEMPLATE


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def test_gguf_round_trip_same_weights_and_tokenizer(model):
    reader = gguf.GGUFReader(model.gguf_path)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert _field(reader, "tokenizer.chat_template") == CHAT_TEMPLATE
    assert _field(reader, "llama.attention.head_count_kv") == model.spec.num_kv_heads

    tokenizer = json.loads((model.hf_dir / "tokenizer.json").read_text())
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == model.vocab_size
    for text, idx in tokenizer["model"]["vocab"].items():
        assert tokens[idx] == text
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tokenizer["model"]["vocab"][IM_END]
    merges = _field(reader, "tokenizer.ggml.merges")
    assert merges == [" ".join(m) for m in tokenizer["model"]["merges"]]

    hf = load_file(str(model.hf_dir / "model.safetensors"))
    expected = gguf_tensors(model.spec, hf)
    found = {t.name: t for t in reader.tensors}
    assert set(found) == set(expected)
    for name, array in expected.items():
        t = found[name]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(np.asarray(t.data).reshape(array.shape), array)


def test_rotary_permutation_maps_hf_rope_to_interleaved_rope():
    """Rotating HF's q in half-split pairs == rotating the permuted q in adjacent pairs."""
    rng = np.random.default_rng(0)
    n_heads, d, pos, theta = 2, 8, 5, 10000.0
    w = rng.standard_normal((n_heads * d, 4))
    x = rng.standard_normal(4)
    freqs = pos / theta ** (np.arange(0, d, 2) / d)

    q = (w @ x).reshape(n_heads, d)
    a, b = q[:, : d // 2], q[:, d // 2 :]
    hf = np.concatenate([a * np.cos(freqs) - b * np.sin(freqs), a * np.sin(freqs) + b * np.cos(freqs)], -1)

    p = (rotary_to_llama_cpp(w, n_heads) @ x).reshape(n_heads, d)
    even, odd = p[:, 0::2], p[:, 1::2]
    out = np.empty_like(p)
    out[:, 0::2] = even * np.cos(freqs) - odd * np.sin(freqs)
    out[:, 1::2] = even * np.sin(freqs) + odd * np.cos(freqs)
    # Same rotated values, stored in llama.cpp's order.
    np.testing.assert_allclose(rotary_to_llama_cpp(hf.reshape(-1, 1), n_heads).reshape(n_heads, d), out)


def test_reference_greedy_is_deterministic_and_templated(model):
    ref = TinyReference(model.hf_dir)
    ids = ref.encode_chat("Hello! What is your name?")
    assert ref.decode(ids) == "user\nHello! What is your name?\nassistant\n"  # specials skipped
    assert ref.encode(chatml_prompt("x"))[0] == ref.tokenizer.token_to_id("<|im_start|>")
    a, b = ref.greedy(ids, 10), ref.greedy(ids, 10)
    assert a.new_ids == b.new_ids and len(a.new_ids) == 10
    assert a.prompt_logits.shape == (len(ids), model.vocab_size)
    # Logits are spread (not near-uniform), so greedy choices are not ties rounding could flip.
    top2 = np.sort(a.prompt_logits, axis=-1)[:, -2:]
    assert np.min(top2[:, 1] - top2[:, 0]) > 1e-3
