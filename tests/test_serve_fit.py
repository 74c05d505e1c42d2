"""The memory fit and production settings: real configs (and a GGUF with Llama-3-8B's real
tensor list, written sparse) x real host profiles, through the same pure decision serve uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provision.engines.adapters import ADAPTERS
from provision.errors import UserError
from provision.profile import load_profile
from provision.serve.decide import ServeOptions, decide_serving
from provision.serve.fit import GIB, FitInput, Target, fit_model, load_fit_facts, shape_from_config
from provision.serve.rules import load_serve_rules
from provision.serve.sources import local_candidate

FIX = Path(__file__).parent / "fixtures" / "models"
HF = FIX / "hf"
PROFILES = Path(__file__).parent / "profiles"
LLAMA3_8B = HF / "meta-llama--Meta-Llama-3-8B-Instruct"
LLAMA31_70B = HF / "meta-llama--Llama-3.1-70B-Instruct"
QWEN25_32B = HF / "Qwen--Qwen2.5-32B-Instruct"
MIXTRAL = HF / "mistralai--Mixtral-8x7B-Instruct-v0.1"
GPU_ENGINES = frozenset({"vllm", "sglang", "transformers", "xllamacpp", "llama-cpp-python"})
CPU_ENGINES = frozenset({"transformers", "xllamacpp", "llama-cpp-python"})


def plan(model: Path, profile: str, installed=GPU_ENGINES, **opts):
    return decide_serving(
        [local_candidate(model)],
        load_profile(PROFILES / f"{profile}.json"),
        installed,
        load_serve_rules(),
        load_fit_facts(),
        ServeOptions(**opts),
        "127.0.0.1",
        8000,
    )


def argv(p) -> list[str]:
    return ADAPTERS[p.choice.engine].server_command(Path("/env/bin/python"), p.candidate.facts.path, p.launch)


def write_sparse_llama3_8b_q8_0(path: Path) -> Path:
    """A GGUF with Meta-Llama-3-8B-Instruct.Q8_0's real metadata and tensor list (names, shapes,
    types as llama.cpp's convert writes them); the tensor data is a hole, so 8.5 GB cost nothing."""
    import gguf
    import numpy as np

    meta = json.loads((FIX / "gguf" / "Meta-Llama-3-8B-Instruct.Q8_0.json").read_text())
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.embedding_length", 4096)
    w.add_uint32("llama.feed_forward_length", 14336)
    w.add_uint32("llama.attention.head_count", 32)
    w.add_uint32("llama.attention.head_count_kv", 8)
    for k, v in meta.items():
        if k == "general.architecture":
            continue
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        else:
            w.add_uint32(k, v)
    q8, f32 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F32

    def tensor(name: str, shape: tuple[int, ...], qtype) -> None:
        # ggml order (ne0 = row length first); GGUFWriter takes numpy order, and for a quantized
        # type the shape in bytes (34 bytes per block of 32 Q8_0 weights).
        if qtype == f32:
            w.add_tensor_info(name, tuple(reversed(shape)), np.dtype(np.float32), int(np.prod(shape)) * 4)
            return
        rows, row_bytes = (shape[1] if len(shape) == 2 else 1), shape[0] // 32 * 34
        w.add_tensor_info(name, (rows, row_bytes), np.dtype(np.uint8), rows * row_bytes, raw_dtype=qtype)

    tensor("token_embd.weight", (4096, 128256), q8)
    for i in range(32):
        tensor(f"blk.{i}.attn_norm.weight", (4096,), f32)
        tensor(f"blk.{i}.attn_q.weight", (4096, 4096), q8)
        tensor(f"blk.{i}.attn_k.weight", (4096, 1024), q8)
        tensor(f"blk.{i}.attn_v.weight", (4096, 1024), q8)
        tensor(f"blk.{i}.attn_output.weight", (4096, 4096), q8)
        tensor(f"blk.{i}.ffn_norm.weight", (4096,), f32)
        tensor(f"blk.{i}.ffn_gate.weight", (4096, 14336), q8)
        tensor(f"blk.{i}.ffn_up.weight", (4096, 14336), q8)
        tensor(f"blk.{i}.ffn_down.weight", (14336, 4096), q8)
    tensor("output_norm.weight", (4096,), f32)
    tensor("output.weight", (4096, 128256), q8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    data_start = path.stat().st_size
    total = sum(t.nbytes for t in w.tensors[0].values()) if w.tensors else 0
    with path.open("r+b") as f:
        f.truncate(data_start + total + 64)  # the hole where the tensor data goes
    return path


@pytest.fixture(scope="module")
def llama3_gguf(tmp_path_factory) -> Path:
    return write_sparse_llama3_8b_q8_0(tmp_path_factory.mktemp("gguf") / "Meta-Llama-3-8B-Instruct.Q8_0.gguf")


# ---------------------------------------------------------------- the done-when cases


def test_8b_on_an_h100_gets_bf16_full_context_no_eager():
    p = plan(LLAMA3_8B, "linux-h100-driver590")
    assert p.choice.engine == "vllm"
    assert p.fit.fits and p.fit.devices == 1 and p.fit.context_length == 8192
    cmd = argv(p)
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16"
    assert cmd[cmd.index("--max-model-len") + 1] == "8192"
    # vLLM's own memory share and CUDA graphs: neither flag is passed.
    assert "--enforce-eager" not in cmd and "--gpu-memory-utilization" not in cmd
    assert "--tensor-parallel-size" not in cmd
    assert 14.9 < p.fit.weights_gib < 15.0  # total_size 16060522496 bytes of bf16
    assert p.fit.kv_cache_gib == pytest.approx(1.0)  # 32 layers x 8 KV heads x 128 x 2 x 2 B x 8192


def test_70b_on_one_h100_does_not_fit_and_says_why():
    p = plan(LLAMA31_70B, "linux-h100-driver590")
    assert not p.fit.fits
    assert p.fit.need_gib > p.fit.have_gib
    assert "does not fit" in p.fit.reason and "more GPUs" in p.fit.reason and "quantized" in p.fit.reason


def test_70b_on_four_h100s_spans_them_with_its_full_context():
    p = plan(LLAMA31_70B, "linux-4x-h100-driver590")
    assert p.fit.fits and p.fit.devices == 4 and p.fit.context_length == 131072
    cmd = argv(p)
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "4"
    assert p.env == {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    sg = plan(LLAMA31_70B, "linux-4x-h100-driver590", installed=frozenset({"sglang"}))
    assert argv(sg)[argv(sg).index("--tp") + 1] == "4"


def test_70b_on_two_h100s_lowers_the_context_and_says_so():
    p = plan(LLAMA31_70B, "linux-4x-h100-driver590", gpus=(0, 1))
    assert p.fit.fits and p.fit.devices == 2
    assert 8192 < p.fit.context_length < 131072 and p.fit.context_length % 256 == 0
    assert f"context lowered from 131072 (the model's maximum) to {p.fit.context_length}" in p.fit.reason
    assert p.env == {"CUDA_VISIBLE_DEVICES": "0,1"}
    # Lowered only as far as memory forces: one more block would not fit.
    facts = load_fit_facts()
    shape = shape_from_config(json.loads((LLAMA31_70B / "config.json").read_text()))
    target = p.target
    bigger = fit_model(FitInput(141107412992, shape, "vllm", 2, 2, p.fit.context_length + 256), target, facts)
    assert bigger.context_length == p.fit.context_length  # could not keep the asked-for one


def test_fewest_gpus_that_hold_the_full_context():
    mixtral = plan(MIXTRAL, "linux-4x-h100-driver590")
    qwen = plan(QWEN25_32B, "linux-4x-h100-driver590")
    assert (mixtral.fit.devices, mixtral.fit.context_length) == (2, 32768)
    assert (qwen.fit.devices, qwen.fit.context_length) == (2, 32768)


def test_tensor_parallel_divides_the_attention_heads():
    from provision.serve.fit import device_counts

    shape = shape_from_config(json.loads((QWEN25_32B / "config.json").read_text()))  # 40 heads
    eight = Target("cuda", tuple(load_fit_devices(8)))
    facts = load_fit_facts()
    assert device_counts(FitInput(1, shape, "vllm", 2, 2), eight, facts) == [1, 2, 4, 8]
    odd = shape.__class__(**{**shape.__dict__, "attention_heads": 28})
    assert device_counts(FitInput(1, odd, "vllm", 2, 2), eight, facts) == [1, 2, 4]
    assert device_counts(FitInput(1, odd, "transformers", 2, 2), eight, facts) == list(range(1, 9))


def load_fit_devices(n: int):
    from provision.serve.fit import Device

    return [Device("NVIDIA H100 80GB HBM3", 79.6, i) for i in range(n)]


def test_4090_on_driver_550_gets_transformers_in_bf16_that_fits():
    # plan --auto installs no vLLM on driver 550 (its CUDA 13 wheels need 580).
    p = plan(LLAMA3_8B, "linux-rtx4090-driver550", installed=CPU_ENGINES)
    assert p.choice.engine == "transformers" and p.dtype == "bfloat16"  # sm_89 has bf16
    assert p.fit.fits and p.fit.need_gib < 24
    cmd = argv(p)
    assert cmd[cmd.index("--dtype") + 1] == "bfloat16" and cmd[cmd.index("--device") + 1] == "auto"


def test_a_lowered_context_says_the_whole_need_and_its_kv_part():
    # Issue 21: "the KV cache for 32768 tokens would need 19.0 GiB" where 19.0 GiB was the whole
    # need (weights + KV + activations + runtime). Qwen/Qwen2.5-7B-Instruct's config.json shape,
    # 7.6e9 bf16 weights, 24 GiB RAM.
    from provision.serve.fit import ModelShape

    shape = ModelShape(28, 28, 4, 128, 3584, 18944, 152064, 32768, torch_dtype="bfloat16")
    cpu = Target("cpu", (), 24.0)
    fit = fit_model(FitInput(15231233024, shape, "transformers", 2, 2), cpu, load_fit_facts())
    assert fit.fits and fit.context_length < 32768
    whole = fit_model(
        FitInput(15231233024, shape, "transformers", 2, 2, 32768), Target("cpu", (), 999.0), load_fit_facts()
    )
    # 28 layers x 4 KV heads x 128 x 2 x 2 B = 57344 B/token: 1.75 GiB at 32768 tokens.
    assert whole.kv_cache_gib == pytest.approx(1.75)
    assert (
        f"at 32768 tokens it would need {whole.need_gib:.1f} GiB in all (weights 14.2, KV cache 1.8,"
        in fit.reason
    )
    assert "KV cache for 32768 tokens would need" not in fit.reason
    assert "KV cache: every layer keeps K and V of every token (28 layers x 4 KV heads x 128)" in fit.reason


def test_32b_does_not_fit_a_4090():
    p = plan(QWEN25_32B, "linux-rtx4090-driver550", installed=CPU_ENGINES)
    assert not p.fit.fits and p.fit.weights_gib > 60


def test_cpu_runs_float32_when_it_fits_and_the_model_dtype_when_not():
    small = plan(HF / "openai-community--gpt2", "linux-graviton3-cpu", installed=CPU_ENGINES)
    assert small.dtype == "float32" and small.fit.devices == 0
    big = plan(LLAMA3_8B, "linux-graviton3-cpu", installed=CPU_ENGINES)
    assert big.dtype == "bfloat16" and big.fit.fits and "float32 would need" in big.dtype_reason


def test_gguf_size_is_its_tensors_and_llama_cpp_offloads_all_layers(llama3_gguf):
    cand = local_candidate(llama3_gguf)
    # Q8_0: 34 bytes per 32 weights; 8.03e9 weights; the real file is 8.54 GB.
    assert 8.4e9 < cand.weights_bytes < 8.6e9
    assert cand.shape.kv_heads == 8 and cand.shape.max_context == 8192
    p = decide_serving(
        [cand],
        load_profile(PROFILES / "linux-rtx4090-driver550.json"),
        CPU_ENGINES,
        load_serve_rules(),
        load_fit_facts(),
        ServeOptions(),
        "127.0.0.1",
        8000,
    )
    assert p.choice.engine == "xllamacpp" and p.fit.fits and p.fit.context_length == 8192
    cmd = argv(p)
    assert cmd[cmd.index("--n-gpu-layers") + 1] == "-1" and cmd[cmd.index("--n-ctx") + 1] == "8192"
    assert "--f32-kv-cache" not in cmd  # llama.cpp's F16 KV cache
    mac = decide_serving(
        [cand],
        load_profile(PROFILES / "macos-m1max.json"),
        CPU_ENGINES,
        load_serve_rules(),
        load_fit_facts(),
        ServeOptions(),
        "127.0.0.1",
        8000,
    )
    assert mac.target.kind == "metal" and mac.fit.devices == 1 and mac.fit.fits


def test_m_series_runs_fp16_on_metal():
    p = plan(LLAMA3_8B, "macos-m1max", installed=CPU_ENGINES)
    assert p.choice.engine == "transformers" and p.dtype == "float16" and p.target.kind == "metal"


def test_gpu_memory_fraction_is_passed_only_when_asked():
    p = plan(LLAMA3_8B, "linux-h100-driver590", gpu_memory_fraction=0.5)
    cmd = argv(p)
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.5"
    assert p.fit.have_gib == pytest.approx(81559 / 1024 * 0.5)


def test_bad_gpus_and_context_are_user_errors():
    with pytest.raises(UserError, match="no GPU 4 here"):
        plan(LLAMA3_8B, "linux-4x-h100-driver590", gpus=(0, 4))
    with pytest.raises(UserError, match="above .* maximum context \\(8192"):
        plan(LLAMA3_8B, "linux-h100-driver590", max_model_len=16384)
    assert plan(LLAMA3_8B, "linux-h100-driver590", max_model_len=4096).fit.context_length == 4096


def test_weights_from_the_index_need_no_weight_files():
    cand = local_candidate(MIXTRAL)
    assert cand.weights_bytes == 93405585408 and not list(MIXTRAL.glob("*.safetensors"))
    assert cand.shape.active_experts == 2
    assert round(cand.weights_bytes / GIB, 1) == 87.0


def test_via_xinference_names_engines_in_their_own_environments_instead_of_an_install_hint():
    p = decide_serving(
        [local_candidate(LLAMA3_8B)],
        load_profile(PROFILES / "linux-h100-driver590.json"),
        frozenset({"transformers"}),
        load_serve_rules(),
        load_fit_facts(),
        ServeOptions(),
        "127.0.0.1",
        9997,
        elsewhere=frozenset({"vllm", "sglang"}),
    )
    assert p.choice.engine == "transformers"
    assert "vllm" in p.choice.reason and "lives in its own environment" in p.choice.reason
    assert "not installed" not in p.choice.reason
    with pytest.raises(UserError, match="serve it without --via"):
        decide_serving(
            [local_candidate(LLAMA3_8B)],
            load_profile(PROFILES / "linux-h100-driver590.json"),
            frozenset({"transformers"}),
            load_serve_rules(),
            load_fit_facts(),
            ServeOptions(engine="vllm"),
            "127.0.0.1",
            9997,
            elsewhere=frozenset({"vllm", "sglang"}),
        )
