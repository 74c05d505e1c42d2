"""The KV cache follows the attention the model has: config-only fixtures of each family
(tests/fixtures/models/attention/*.json, the fields of the real config.json each file names)
read into a layout, and what each engine allocates for it, in bytes computed by hand below."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from provision.serve.attention import KvCache, kv_cache
from provision.serve.fit import (
    Device,
    FitInput,
    ModelShape,
    Target,
    device_counts,
    fit_model,
    load_fit_facts,
    shape_from_config,
)
from tests.test_serve_cli import serve_root  # noqa: F401 - the fixture

ATT = Path(__file__).parent / "fixtures" / "models" / "attention"
FACTS = load_fit_facts()
CTX = 32768
# The chunk each engine prefills in (recipes/serve_fit.toml prefill_chunk; transformers: all).
CHUNK = {"vllm": 8192, "sglang": 8192, "transformers": CTX, "xllamacpp": 512, "llama-cpp-python": 512}
BACKENDS = tuple(CHUNK)


def shape(name: str) -> ModelShape:
    s = shape_from_config(json.loads((ATT / f"{name}.json").read_text()))
    assert s is not None
    return s


def cache(name: str, backend: str, context: int = CTX, kv_bytes: int = 2) -> KvCache:
    s = shape(name)
    rules = FACTS.kv_rules(backend)
    return kv_cache(
        s.layout, s.kv_heads, s.head_dim, s.layers, rules, kv_bytes, context, CHUNK[backend], s.architectures
    )


def test_mla_keeps_the_latent_in_vllm_sglang_llama_cpp_and_k_v_in_transformers():
    # DeepSeek-V3: kv_lora_rank 512 + qk_rope_head_dim 64 = 576 elements x 2 B = 1152 B per layer,
    # x 61 layers = 70272 B per token. (The old rule: 61 x 128 KV heads x (7168 / 128 = 56) x 2
    # x 2 B = 1748992 B, 25x too much.) transformers caches K and V decompressed:
    # 128 heads x (128 + 64 + 128) = 40960 x 2 B = 81920 B per layer, x 61 = 4997120 B.
    for backend in ("vllm", "sglang", "xllamacpp", "llama-cpp-python"):
        c = cache("deepseek-ai--DeepSeek-V3", backend)
        assert (c.per_token, c.windowed, c.state) == (70272, 0, 0), backend
        assert c.replicated and "MLA" in c.rule and "kv_lora_rank 512 + qk_rope_head_dim 64" in c.rule
    t = cache("deepseek-ai--DeepSeek-V3", "transformers")
    assert t.per_token == 4997120 and "decompressed" in t.rule


def test_mla_latent_is_replicated_across_tensor_parallel_ranks():
    # One latent "head": each of 8 ranks holds all of it (vLLM's MLA spec has num_kv_heads 1);
    # a GQA model's 8 KV heads split one per rank.
    c = cache("deepseek-ai--DeepSeek-V3", "vllm")
    assert c.per_device(8) == c.total
    m = cache("mistralai--Mistral-7B-v0.1", "sglang")  # 8 KV heads, kept whole in SGLang
    assert m.per_device(8) == m.total / 8 and m.per_device(16) == m.total / 8


def test_interleaved_windows_gemma3():
    # Gemma-3-1b: 26 layers, sliding_window_pattern 6: layers 5, 11, 17, 23 global, 22 windowed
    # (window 512). Per layer 1 KV head x 256 x 2 (K, V) x 2 B = 1024 B: 4 x 1024 = 4096 B/token.
    # vLLM: ceil(min(511 + 8192, 32768) / 16) + 1 = 545 blocks = 8720 tokens; 22 x 1024 x 8720.
    v = cache("google--gemma-3-1b-it", "vllm")
    assert (v.per_token, v.windowed) == (4096, 22 * 1024 * 8720)
    assert (
        "22 windowed layers keep 8720 tokens (window 512)" in v.rule and "sliding_window_pattern 6" in v.rule
    )
    # xllamacpp: min(32768, pad(512 x 1 sequence + 512 ubatch, 256)) = 1024 tokens.
    x = cache("google--gemma-3-1b-it", "xllamacpp")
    assert (x.per_token, x.windowed) == (4096, 22 * 1024 * 1024)
    # SGLang gives Gemma 3 no hybrid SWA pool; llama-cpp-python's swa_full; transformers (upper
    # bound): all 26 layers keep every token, 26624 B/token.
    for backend in ("sglang", "llama-cpp-python", "transformers"):
        c = cache("google--gemma-3-1b-it", backend)
        assert (c.per_token, c.windowed) == (26624, 0), backend
        assert "keep every token too" in c.rule


def test_interleaved_windows_gpt_oss():
    # gpt-oss-20b: layer_types alternate sliding/full over 24 layers, window 128; per layer
    # 8 KV heads x 64 x 2 x 2 B = 2048 B; 12 full layers = 24576 B/token.
    # vLLM: ceil(min(127 + 8192, 32768) / 16) + 1 = 521 blocks = 8336 tokens.
    v = cache("openai--gpt-oss-20b", "vllm")
    assert (v.per_token, v.windowed) == (24576, 12 * 2048 * 8336)
    # SGLang lists GptOssForCausalLM for its hybrid SWA pool: 0.8 x 32768 = 26215 tokens.
    s = cache("openai--gpt-oss-20b", "sglang")
    assert (s.per_token, s.windowed) == (24576, 12 * 2048 * 26215)
    # xllamacpp: pad(128 + 512, 256) = 768 tokens.
    assert cache("openai--gpt-oss-20b", "xllamacpp").windowed == 12 * 2048 * 768
    assert cache("openai--gpt-oss-20b", "llama-cpp-python").per_token == 49152


def test_one_model_wide_window_mistral_v0_1():
    # Mistral-7B-v0.1: sliding_window 4096 on all 32 layers; per layer 8 x 128 x 2 x 2 B = 4096 B,
    # 131072 B/token when kept whole. vLLM windows every layer (cache_config.sliding_window):
    # ceil(min(4095 + 8192, 32768) / 16) + 1 = 769 blocks = 12304 tokens.
    v = cache("mistralai--Mistral-7B-v0.1", "vllm")
    assert (v.per_token, v.windowed) == (0, 32 * 4096 * 12304)
    assert v.total == 1612709888  # 1.5 GiB, not 4 GiB
    # A window as long as the context is the whole context: the same as full.
    short = cache("mistralai--Mistral-7B-v0.1", "vllm", context=4096)
    assert (short.per_token, short.windowed) == (131072, 0) and "window 4096 >= the context" in short.rule
    for backend in ("sglang", "transformers", "xllamacpp", "llama-cpp-python"):
        assert cache("mistralai--Mistral-7B-v0.1", backend).per_token == 131072, backend


def test_qwen2_window_that_is_switched_off_is_ignored():
    s = shape_from_config(
        {
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "hidden_size": 3584,
            "sliding_window": 131072,
            "use_sliding_window": False,
        }
    )
    assert s is not None and s.layout is None


def test_gated_delta_net_hybrid_qwen3_next():
    # Qwen3-Next-80B-A3B: 48 layers, full_attention_interval 4: 12 attention layers x 2 KV heads
    # x 256 x 2 x 2 B = 24576 B/token. 36 Gated DeltaNet layers, each per sequence:
    # conv (2 x 16 x 128 + 32 x 128) x (4 - 1) = 24576, recurrent 32 x 128 x 128 = 524288 elements.
    # vLLM (both in the model dtype): 36 x 548864 x 2 B = 39518208 B;
    # SGLang (conv bf16, ssm float32): 36 x (24576 x 2 + 524288 x 4) = 77266944 B;
    # llama.cpp (both F32): 36 x 548864 x 4 = 79036416 B.
    expected = {"vllm": 39518208, "sglang": 77266944, "xllamacpp": 79036416, "transformers": 39518208}
    for backend, state in expected.items():
        c = cache("Qwen--Qwen3-Next-80B-A3B-Instruct", backend)
        assert (c.per_token, c.windowed, c.state) == (24576, 0, state), backend
        assert "36 gated-delta-net layers" in c.rule and "full_attention_interval 4" in c.rule
    # A fixed state: doubling the context adds only the attention layers' tokens.
    a, b = (cache("Qwen--Qwen3-Next-80B-A3B-Instruct", "vllm", n).total for n in (CTX, 2 * CTX))
    assert b - a == 24576 * CTX


def test_a_config_that_says_its_recurrent_state_is_float32_is_believed():
    # A Qwen3.5-9B-style multimodal config (text_config; layer_types 3 linear + 1 full, x 8;
    # "mamba_ssm_dtype": "float32"): 8 full layers x 4 KV heads x 256 x 2 x 2 B = 32768 B/token;
    # 24 Gated DeltaNet layers x (24576 x 2 B conv + 524288 x 4 B recurrent) = 51511296 B in vLLM.
    text = {
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "hidden_size": 4096,
        "layer_types": (["linear_attention"] * 3 + ["full_attention"]) * 8,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "linear_value_head_dim": 128,
        "mamba_ssm_dtype": "float32",
    }
    s = shape_from_config({"architectures": ["Qwen3_5ForConditionalGeneration"], "text_config": text})
    assert s is not None
    c = kv_cache(s.layout, s.kv_heads, s.head_dim, s.layers, FACTS.kv_rules("vllm"), 2, CTX, 8192)
    assert (c.per_token, c.state) == (32768, 51511296) and "from layer_types" in c.rule


def test_mamba_hybrid_jamba():
    # Jamba-v0.1: 32 layers, attention where i % 8 == 4: 4 layers x 8 x 128 x 2 x 2 B = 16384 B/token.
    # 28 Mamba layers, d_inner = 2 x 4096 = 8192: conv 8192 x (4 - 1) = 24576, ssm 8192 x 16 =
    # 131072 elements. vLLM: 28 x 155648 x 2 B = 8716288; llama.cpp: x 4 B = 17432576.
    v = cache("ai21labs--Jamba-v0.1", "vllm")
    assert (v.per_token, v.state) == (16384, 8716288)
    assert "28 mamba layers" in v.rule and "attn_layer_period 8" in v.rule
    assert cache("ai21labs--Jamba-v0.1", "xllamacpp").state == 17432576


def test_nemotron_h_pattern_and_mamba2_state():
    # A made-up Nemotron-H-style config: pattern "M*M-" (Mamba2, attention, Mamba2, MLP).
    # Attention: 1 layer x 2 KV heads x 128 x 2 x 2 B = 1024 B/token. Mamba2, d_inner = 2 x 1024:
    # conv (2048 + 2 x 1 group x 64) x 3 = 6528, ssm 16 heads x 128 x 64 = 131072 elements;
    # 2 layers x (6528 + 131072) x 2 B = 550400 B.
    s = shape_from_config(
        {
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "head_dim": 128,
            "hidden_size": 1024,
            "hybrid_override_pattern": "M*M-",
            "mamba_num_heads": 16,
            "mamba_head_dim": 128,
            "ssm_state_size": 64,
            "conv_kernel": 4,
            "n_groups": 1,
            "expand": 2,
        }
    )
    assert s is not None
    c = kv_cache(s.layout, s.kv_heads, s.head_dim, s.layers, FACTS.kv_rules("vllm"), 2, CTX, 8192)
    assert (c.per_token, c.state) == (1024, 550400)


def test_registry_metadata_that_names_mla_without_its_fields_says_so():
    # Xinference 4.1.0's deepseek-v3 model_metadata: architecture_type "mla", no kv_lora_rank.
    meta = {
        "vocab_size": 129280,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "architecture_type": "mla",
        "hidden_size": 7168,
        "intermediate_size": 18432,
        "num_hidden_layers": 61,
    }
    s = shape_from_config(meta)
    assert s is not None
    c = kv_cache(s.layout, s.kv_heads, s.head_dim, s.layers, FACTS.kv_rules("vllm"), 2, CTX, 8192)
    # 61 x 128 x (7168 / 128 = 56) x 2 x 2 B = 1748992 B/token, and the reason says why.
    assert c.per_token == 1748992 and "architecture_type mla named without its fields" in c.rule


def test_plain_model_keeps_the_old_rule():
    # Llama-3-8B: 32 layers x 8 KV heads x 128 x 2 x 2 B = 131072 B/token in every engine.
    cfg = json.loads((ATT.parent / "hf" / "meta-llama--Meta-Llama-3-8B-Instruct" / "config.json").read_text())
    s = shape_from_config(cfg)
    assert s is not None and s.layout is None
    for backend in BACKENDS:
        c = kv_cache(None, s.kv_heads, s.head_dim, s.layers, FACTS.kv_rules(backend), 2, CTX, 512)
        assert c.per_token == 131072 and "every layer keeps K and V" in c.rule


# ---------------------------------------------------------------- through the fit


def test_mistral_v0_1_keeps_its_full_context_on_a_20_gib_card_in_vllm_and_says_why():
    # 7.24e9 parameters x 2 B = 14.5 GB of bf16 weights (13.5 GiB), 2 GiB runtime, 0.7 GiB of
    # activations for an 8192-token chunk: 16.2 GiB before the KV cache, on 20 GiB x 0.9 = 18.
    # The window's 1.5 GiB fits; the whole context's 4 GiB (SGLang keeps every token) does not.
    s = shape("mistralai--Mistral-7B-v0.1")
    gpu = Target("cuda", (Device("NVIDIA RTX 4000 Ada Generation", 20.0, 0),))
    fit = fit_model(FitInput(14483464192, s, "vllm", 2, 2), gpu, FACTS)
    assert fit.fits and fit.context_length == 32768
    assert fit.kv_cache_gib == pytest.approx(1612709888 / 2**30)
    assert "KV cache: 32 windowed layers keep 12304 tokens (window 4096)" in fit.reason
    sg = fit_model(FitInput(14483464192, s, "sglang", 2, 2), gpu, FACTS)
    assert sg.fits and sg.context_length < 32768 and "keep every token too" in sg.reason


def test_llama_cpp_bindings_differ_by_backend_name():
    s = shape("google--gemma-3-1b-it")
    cpu = Target("cpu", (), 31.0)
    x = fit_model(FitInput(10**9, s, "llama-cpp", 2, 4, backend="xllamacpp"), cpu, FACTS)
    p = fit_model(FitInput(10**9, s, "llama-cpp", 2, 4, backend="llama-cpp-python"), cpu, FACTS)
    assert x.kv_cache_gib < p.kv_cache_gib
    assert p.kv_cache_gib == pytest.approx(26624 * 32768 / 2**30)


def test_a_backend_without_its_own_kv_table_takes_its_engine_kinds():
    s = shape("openai--gpt-oss-20b")
    fit = fit_model(
        FitInput(10**9, s, "llama-cpp", 2, 4, backend="another-binding"), Target("cpu", (), 64.0), FACTS
    )
    assert fit.kv_rule.startswith("12 full layers keep every token; 12 windowed layers keep every token too")


def test_tensor_parallel_engines_are_the_recipes():
    # Which engines span GPUs by tensor parallelism is one recipe field; the launch takes the
    # fit's tensor-parallel size.
    assert {k for k, e in FACTS.engines.items() if e.tensor_parallel} == {"vllm", "sglang"}
    eight = Target("cuda", tuple(Device("H100", 79.6, i) for i in range(8)))
    s = shape("Qwen--Qwen3-Next-80B-A3B-Instruct")
    assert device_counts(FitInput(1, s, "transformers", 2, 2), eight, FACTS) == list(range(1, 9))
    eng = FACTS.engines["transformers"]
    facts = FACTS.__class__(
        **{
            **FACTS.__dict__,
            "engines": {
                **FACTS.engines,
                "transformers": eng.__class__(**{**eng.__dict__, "tensor_parallel": True}),
            },
        }
    )
    assert device_counts(FitInput(1, s, "transformers", 2, 2), eight, facts) == [1, 2, 4, 8]
    big = FitInput(160 * 10**9, s, "transformers", 2, 2)
    assert fit_model(big, eight, facts).tensor_parallel == 4
    assert fit_model(big, eight, FACTS).tensor_parallel == 1


# ---------------------------------------------------------------- against cal-model-mem


@pytest.mark.slow
def test_kv_agrees_with_xinference_where_it_knows_the_architecture(serve_root):  # noqa: F811
    """Xinference 4.1.0's estimator (xinference/model/llm/memory.py) counts windowed layers
    whole and Gated DeltaNet state; it refuses MLA and Mamba layouts. Where it answers, its
    per-token KV equals ours for the engines that keep every token, and its recurrent state is
    SGLang's within one conv step (it keeps the whole kernel, SGLang kernel - 1)."""
    from provision.install.receipt import installed_backends

    python = installed_backends(serve_root)["xinference"].python
    script = (
        "import json, sys\n"
        "from xinference.model.llm.memory import load_model_config_json as load, "
        "estimate_kv_cache_memory as kv, estimate_recurrent_state_memory as rs\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        i = load(p)\n"
        "    except ValueError as e:\n"
        "        out[p] = str(e); continue\n"
        f"    out[p] = [kv(i, {CTX}, 16) * 2**20 / {CTX}, rs(i, 1, 'sglang') * 2**20]\n"
        "print(json.dumps(out))\n"
    )
    files = sorted(str(p) for p in ATT.glob("*.json"))
    done = subprocess.run([str(python), "-c", script, *files], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    assert "mla" in theirs[str(ATT / "deepseek-ai--DeepSeek-V3.json")]
    assert "unknown_attention_layout" in theirs[str(ATT / "ai21labs--Jamba-v0.1.json")]
    for name in ("google--gemma-3-1b-it", "openai--gpt-oss-20b", "mistralai--Mistral-7B-v0.1"):
        per_token, state = theirs[str(ATT / f"{name}.json")]
        assert per_token == cache(name, "transformers").per_token and state == 0, name
    per_token, state = theirs[str(ATT / "Qwen--Qwen3-Next-80B-A3B-Instruct.json")]
    ours = cache("Qwen--Qwen3-Next-80B-A3B-Instruct", "sglang")
    assert per_token == ours.per_token
    assert state - ours.state == 36 * (2 * 16 * 128 + 32 * 128) * 2  # one more conv step, bf16


# ---------------------------------------------------------------- GGUF metadata


def _gguf(path: Path, arch: str, keys: dict[str, int | list[int]]) -> Path:
    """A GGUF with these <arch>.* keys and no tensors, read back by serve's own reader."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    for k, v in keys.items():
        if isinstance(v, list):
            w.add_array(f"{arch}.{k}", v)
        else:
            w.add_uint32(f"{arch}.{k}", v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def _gguf_shape(path: Path) -> ModelShape:
    from provision.serve.fit import shape_from_gguf
    from provision.serve.model_facts import read_gguf_metadata

    s = shape_from_gguf(read_gguf_metadata(path))
    assert s is not None
    return s


def _gguf_cache(s: ModelShape, backend: str = "xllamacpp") -> KvCache:
    return kv_cache(s.layout, s.kv_heads, s.head_dim, s.layers, FACTS.kv_rules(backend), 2, CTX, 512)


def test_gguf_layouts(tmp_path):
    common = {"embedding_length": 2048, "feed_forward_length": 5120, "context_length": CTX}
    # gemma3 with no sliding_window_pattern key: llama.cpp's loader pattern 6 (recipe), so 4 of
    # 26 layers global; per layer 1 x 256 x 2 x 2 B = 1024 B; windows pad(512 + 512, 256) = 1024.
    g = _gguf_shape(
        _gguf(
            tmp_path / "g.gguf",
            "gemma3",
            {
                **common,
                "block_count": 26,
                "attention.head_count": 4,
                "attention.head_count_kv": 1,
                "attention.key_length": 256,
                "attention.sliding_window": 512,
            },
        )
    )
    c = _gguf_cache(g)
    assert (c.per_token, c.windowed) == (4096, 22 * 1024 * 1024) and "sliding_window 512" in c.rule
    # qwen3next: full_attention_interval 4; llama.cpp's n_embd_r = (4 - 1) x (4096 + 2 x 16 x 128)
    # = 24576, n_embd_s = 128 x 4096 = 524288 (the HF fields' numbers), F32: 36 x 548864 x 4 B.
    q = _gguf_shape(
        _gguf(
            tmp_path / "q.gguf",
            "qwen3next",
            {
                **common,
                "block_count": 48,
                "attention.head_count": 16,
                "attention.head_count_kv": 2,
                "attention.key_length": 256,
                "full_attention_interval": 4,
                "ssm.conv_kernel": 4,
                "ssm.inner_size": 4096,
                "ssm.state_size": 128,
                "ssm.group_count": 16,
                "ssm.time_step_rank": 32,
            },
        )
    )
    c = _gguf_cache(q)
    assert (c.per_token, c.state) == (24576, 79036416)
    # jamba: head_count_kv per layer, 0 on the 28 Mamba layers; 8 on layers 4, 12, 20, 28.
    # 4 x 8 x 128 x 2 x 2 B = 16384 B/token; state 28 x (8192 x 3 + 16 x 8192) x 4 B = 17432576.
    kv = [8 if i % 8 == 4 else 0 for i in range(32)]
    j = _gguf_shape(
        _gguf(
            tmp_path / "j.gguf",
            "jamba",
            {
                "embedding_length": 4096,
                "feed_forward_length": 14336,
                "block_count": 32,
                "attention.head_count": 32,
                "attention.head_count_kv": kv,
                "ssm.conv_kernel": 4,
                "ssm.inner_size": 8192,
                "ssm.state_size": 16,
                "ssm.time_step_rank": 256,
            },
        )
    )
    assert j.kv_heads == 8
    c = _gguf_cache(j)
    assert (c.per_token, c.state) == (16384, 17432576) and "head_count_kv per layer" in c.rule
    # deepseek2: kv_lora_rank 512 + rope 64: 576 x 2 B x 61 layers = 70272 B/token.
    d = _gguf_shape(
        _gguf(
            tmp_path / "d.gguf",
            "deepseek2",
            {
                "embedding_length": 7168,
                "feed_forward_length": 18432,
                "block_count": 61,
                "attention.head_count": 128,
                "attention.head_count_kv": 1,
                "attention.key_length": 576,
                "attention.kv_lora_rank": 512,
                "rope.dimension_count": 64,
            },
        )
    )
    assert _gguf_cache(d).per_token == 70272
    # A window with no pattern known (llama, say): counted whole.
    m = _gguf_shape(
        _gguf(
            tmp_path / "m.gguf",
            "llama",
            {
                **common,
                "block_count": 32,
                "attention.head_count": 32,
                "attention.head_count_kv": 8,
                "attention.sliding_window": 4096,
            },
        )
    )
    assert m.layout is None


# ---------------------------------------------------------------- against llama.cpp itself


def write_tiny_gemma3(path: Path, tokenizer_from: Path) -> Path:
    """A 12-layer gemma3 GGUF (random f32 weights, the tiny llama's tokenizer): 1 KV head x 16,
    sliding_window 64, context 4096; llama.cpp's gemma3 loader windows 10 layers (pattern 6)."""
    import gguf
    import numpy as np

    src = gguf.GGUFReader(tokenizer_from)

    def strings(key: str) -> list[str]:
        f = src.fields[key]
        return [bytes(f.parts[i]).decode() for i in f.data]

    tokens = strings("tokenizer.ggml.tokens")
    types = [
        int(src.fields["tokenizer.ggml.token_type"].parts[i][0])
        for i in src.fields["tokenizer.ggml.token_type"].data
    ]
    layers, hidden, heads, head_dim, ff = 12, 64, 4, 16, 128
    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(4096)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(1)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(64)
    w.add_rope_freq_base(1e6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(strings("tokenizer.ggml.merges"))
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    rng = np.random.default_rng(0)

    def rand(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    def ones(name: str, n: int) -> None:
        w.add_tensor(name, np.ones(n, np.float32))

    rand("token_embd.weight", len(tokens), hidden)
    ones("output_norm.weight", hidden)
    for i in range(layers):
        p = f"blk.{i}."
        for norm in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"):
            ones(p + norm + ".weight", hidden)
        ones(p + "attn_q_norm.weight", head_dim)
        ones(p + "attn_k_norm.weight", head_dim)
        rand(p + "attn_q.weight", heads * head_dim, hidden)
        rand(p + "attn_k.weight", head_dim, hidden)
        rand(p + "attn_v.weight", head_dim, hidden)
        rand(p + "attn_output.weight", hidden, heads * head_dim)
        rand(p + "ffn_gate.weight", ff, hidden)
        rand(p + "ffn_up.weight", ff, hidden)
        rand(p + "ffn_down.weight", hidden, ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_jamba(path: Path, tokenizer_from: Path) -> Path:
    """A 4-layer jamba GGUF (random f32 weights, the tiny llama's tokenizer): layer 1 attends
    (2 KV heads x 16), layers 0, 2, 3 are Mamba with d_inner 2048, d_state 64, d_conv 4."""
    import gguf
    import numpy as np

    src = gguf.GGUFReader(tokenizer_from)

    def strings(key: str) -> list[str]:
        f = src.fields[key]
        return [bytes(f.parts[i]).decode() for i in f.data]

    tokens = strings("tokenizer.ggml.tokens")
    types = [
        int(src.fields["tokenizer.ggml.token_type"].parts[i][0])
        for i in src.fields["tokenizer.ggml.token_type"].data
    ]
    hidden, heads, head_dim, ff, inner, d_state, d_conv, dt_rank = 1024, 64, 16, 128, 2048, 64, 4, 8
    kv = [0, 2, 0, 0]
    w = gguf.GGUFWriter(str(path), "jamba")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(4096)
    w.add_embedding_length(hidden)
    w.add_block_count(len(kv))
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_ssm_conv_kernel(d_conv)
    w.add_ssm_inner_size(inner)
    w.add_ssm_state_size(d_state)
    w.add_ssm_time_step_rank(dt_rank)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(strings("tokenizer.ggml.merges"))
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    rng = np.random.default_rng(0)

    def rand(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    def ones(name: str, n: int) -> None:
        w.add_tensor(name, np.ones(n, np.float32))

    rand("token_embd.weight", len(tokens), hidden)
    ones("output_norm.weight", hidden)
    for i, kv_heads in enumerate(kv):
        p = f"blk.{i}."
        ones(p + "attn_norm.weight", hidden)
        if kv_heads:
            rand(p + "attn_q.weight", heads * head_dim, hidden)
            rand(p + "attn_k.weight", kv_heads * head_dim, hidden)
            rand(p + "attn_v.weight", kv_heads * head_dim, hidden)
            rand(p + "attn_output.weight", hidden, heads * head_dim)
        else:
            rand(p + "ssm_in.weight", 2 * inner, hidden)
            rand(p + "ssm_conv1d.weight", inner, d_conv)
            rand(p + "ssm_conv1d.bias", inner)
            rand(p + "ssm_x.weight", dt_rank + 2 * d_state, inner)
            ones(p + "ssm_dt_norm.weight", dt_rank)
            ones(p + "ssm_b_norm.weight", d_state)
            ones(p + "ssm_c_norm.weight", d_state)
            rand(p + "ssm_dt.weight", inner, dt_rank)
            rand(p + "ssm_dt.bias", inner)
            rand(p + "ssm_a", inner, d_state)
            rand(p + "ssm_d", inner)
            rand(p + "ssm_out.weight", hidden, inner)
        ones(p + "ffn_norm.weight", hidden)
        rand(p + "ffn_gate.weight", ff, hidden)
        rand(p + "ffn_up.weight", ff, hidden)
        rand(p + "ffn_down.weight", hidden, ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# Load the GGUF as serve launches each binding (llama_cpp.Llama with its defaults; xllamacpp's
# CommonParams with n_parallel 1, as provision/engines/xllamacpp_serve.py) and print the log.
_LOAD = {
    "llama-cpp-python": (
        "import sys, llama_cpp\nllama_cpp.Llama(sys.argv[1], n_ctx=4096, n_gpu_layers=0, verbose=True)\n"
    ),
    "xllamacpp": (
        "import os, sys, time, xllamacpp\n"
        "p = xllamacpp.CommonParams()\n"
        "p.model.path = sys.argv[1]\n"
        "p.hostnames = ['127.0.0.1']\n"
        "p.port = int(sys.argv[2])\n"
        "p.n_ctx = 4096\n"
        "p.n_parallel = 1\n"
        "p.n_gpu_layers = 0\n"
        "p.verbosity = 10\n"
        "s = xllamacpp.Server(p)\n"
        # The log is written by llama.cpp's logging thread; the server's teardown can hang, so
        # leave without it once the log has had a second.
        "time.sleep(1)\n"
        "os._exit(0)\n"
    ),
}


def _llama_cpp_log(root: Path, backend: str, model: Path) -> str:
    import socket

    from provision.install.receipt import installed_backends

    engines = installed_backends(root)
    if backend not in engines:
        pytest.skip(f"{backend} is not installed here")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [str(engines[backend].python), "-c", _LOAD[backend], str(model), str(port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["llama-cpp-python", "xllamacpp"])
def test_llama_cpp_allocates_the_recurrent_state_we_estimate(serve_root, tmp_path, backend):  # noqa: F811
    """llama.cpp's recurrent memory for the tiny jamba, read from its log: one cell (sequence),
    R (conv) 3 x (4 - 1) x 2048 x 4 B = 0.07 MiB, S (ssm) 3 x 64 x 2048 x 4 B = 1.50 MiB, both
    F32; the one attention layer 2 x 16 x 2 x 2 B x 4096 = 0.50 MiB."""
    import re

    from provision.serve.fit import shape_from_gguf
    from provision.serve.model_facts import read_gguf_metadata
    from provision.tiny_model import ensure_tiny_model

    model = write_tiny_jamba(tmp_path / "tiny-jamba.gguf", ensure_tiny_model().gguf_path)
    log = _llama_cpp_log(serve_root, backend, model)
    m = re.search(
        r"memory_recurrent: size = .*?\(\s*(\d+) cells.*R \(f32\):\s*([\d.]+) MiB, S \(f32\):\s*([\d.]+) MiB",
        log,
    )
    kv = re.search(r"kv_cache: size =\s*([\d.]+) MiB \(\s*4096 cells,\s*1 layers", log)
    assert m and kv, log[-3000:]
    s = shape_from_gguf(read_gguf_metadata(model))
    assert s is not None and s.layout is not None and s.layout.state is not None
    ours = kv_cache(s.layout, s.kv_heads, s.head_dim, s.layers, FACTS.kv_rules(backend), 2, 4096, 512)
    conv, ssm = (3 * n * 4 / 2**20 for n in (s.layout.state.conv, s.layout.state.recurrent))
    assert (int(m.group(1)), float(m.group(2)), float(m.group(3))) == (1, round(conv, 2), round(ssm, 2))
    assert ours.state == 3 * (6144 + 131072) * 4 and round(ours.per_token * 4096 / 2**20, 2) == float(
        kv.group(1)
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["llama-cpp-python", "xllamacpp"])
def test_llama_cpp_allocates_the_window_cache_we_estimate(serve_root, tmp_path, backend):  # noqa: F811
    """The SWA cache llama.cpp creates, read from its own log, is the one the fit counts:
    xllamacpp pad(64 + 512, 256) = 768 cells on the 10 windowed layers, llama-cpp-python the
    whole 4096 (swa_full, the C default)."""
    import re

    from provision.serve.fit import shape_from_gguf
    from provision.serve.model_facts import read_gguf_metadata
    from provision.tiny_model import ensure_tiny_model

    model = write_tiny_gemma3(tmp_path / "tiny-gemma3.gguf", ensure_tiny_model().gguf_path)
    log = _llama_cpp_log(serve_root, backend, model)
    # llama_kv_cache: size = 0.47 MiB (   768 cells,  10 layers,  1/1 seqs), ...
    caches = {
        int(lay): int(cells) for cells, lay in re.findall(r"size = .*?\(\s*(\d+) cells,\s*(\d+) layers", log)
    }
    s = shape_from_gguf(read_gguf_metadata(model))
    assert s is not None and s.layout is not None
    ours = kv_cache(s.layout, s.kv_heads, s.head_dim, s.layers, FACTS.kv_rules(backend), 2, 4096, 512)
    per_layer = 1 * 16 * 2 * 2  # 1 KV head x 16 x K and V x f16
    if ours.windowed:
        assert caches == {2: 4096, 10: ours.windowed // (10 * per_layer)} == {2: 4096, 10: 768}, log[-3000:]
    else:
        assert caches == {2: 4096, 10: 4096} and ours.per_token == 12 * per_layer, log[-3000:]
