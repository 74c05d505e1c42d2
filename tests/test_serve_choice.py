"""Engine choice: real model configs / GGUF metadata x host profiles x what is installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provision.errors import UserError
from provision.profile import load_profile
from provision.serve.choice import choose_engine, family_of
from provision.serve.model_facts import facts_from_gguf_metadata, inspect_model, quantization_of
from provision.serve.rules import load_serve_rules

FIX = Path(__file__).parent / "fixtures" / "models"
RULES = load_serve_rules()
PROFILES = Path(__file__).parent / "profiles"
CUDA = load_profile(PROFILES / "linux-rtx3090-driver570.json")
CPU = load_profile(PROFILES / "linux-graviton3-cpu.json")
MAC = load_profile(PROFILES / "macos-m1max.json")
ALL = frozenset({"transformers", "vllm", "sglang", "xllamacpp", "llama-cpp-python"})
NO_GPU_ENGINES = frozenset({"transformers", "xllamacpp", "llama-cpp-python"})


def hf(name: str):
    return inspect_model(FIX / "hf" / name)


def write_gguf(meta: dict, path: Path) -> Path:
    """A real GGUF file (metadata only) from a fixture's key/values."""
    import gguf

    writer = gguf.GGUFWriter(str(path), meta["general.architecture"])
    for key, value in meta.items():
        if key == "general.architecture":
            continue
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def gguf_model(tmp_path):
    def make(stem: str):
        meta = json.loads((FIX / "gguf" / f"{stem}.json").read_text())
        return inspect_model(write_gguf(meta, tmp_path / f"{stem}.gguf"))

    return make


# model, profile, installed -> engine, family
TABLE = [
    ("meta-llama--Meta-Llama-3-8B-Instruct", CUDA, ALL, "vllm", "llama-3"),
    ("meta-llama--Llama-2-7b-chat-hf", CUDA, ALL, "vllm", "llama-2"),
    ("01-ai--Yi-1.5-6B-Chat", CUDA, ALL, "vllm", "yi"),
    ("Qwen--Qwen2-7B-Instruct", CUDA, ALL, "vllm", "qwen2"),
    ("Qwen--Qwen2-7B-Instruct-AWQ", CUDA, ALL, "vllm", "qwen2"),
    ("Qwen--Qwen2-7B-Instruct-GPTQ-Int8", CUDA, ALL, "vllm", "qwen2"),
    ("TheBloke--Llama-2-7B-Chat-GPTQ-old-layout", CUDA, ALL, "vllm", "llama-2"),
    ("mistralai--Mistral-7B-Instruct-v0.3", CUDA, ALL, "vllm", "mistral"),
    ("mistralai--Mixtral-8x7B-Instruct-v0.1", CUDA, ALL, "vllm", "mixtral"),
    ("google--gemma-7b-it", CUDA, ALL, "vllm", "gemma"),
    ("internlm--internlm2-chat-7b", CUDA, ALL, "vllm", "internlm2"),
    ("THUDM--chatglm3-6b", CUDA, ALL, "vllm", "chatglm3"),
    # 2-bit GPTQ: vLLM takes Int3/4/8 only, SGLang Int4/8.
    ("synthetic--qwen2-gptq-int2", CUDA, ALL, "transformers", "qwen2"),
    # FP8 is outside the seed's vLLM formats; SGLang takes it.
    ("Qwen--Qwen3-8B-FP8", CUDA, ALL, "sglang", "qwen3"),
    ("unsloth--llama-3-8b-bnb-4bit", CUDA, ALL, "transformers", "llama-3"),
    # Families outside every list.
    ("openai-community--gpt2", CUDA, ALL, "transformers", None),
    ("microsoft--Phi-3-mini-4k-instruct", CUDA, ALL, "transformers", None),
    # vLLM not installed: SGLang where its list has the family, else transformers.
    ("Qwen--Qwen2-7B-Instruct", CUDA, ALL - {"vllm"}, "sglang", "qwen2"),
    ("internlm--internlm2-chat-7b", CUDA, ALL - {"vllm"}, "transformers", "internlm2"),
    # No CUDA device: never vLLM / SGLang, whatever is installed.
    ("meta-llama--Meta-Llama-3-8B-Instruct", CPU, ALL, "transformers", "llama-3"),
    ("Qwen--Qwen2-7B-Instruct-AWQ", MAC, ALL, "transformers", "qwen2"),
    ("Qwen--Qwen2-7B-Instruct", CUDA, NO_GPU_ENGINES, "transformers", "qwen2"),
]


@pytest.mark.parametrize(
    ("model", "profile", "installed", "engine", "family"),
    TABLE,
    ids=[f"{r[0]}-{r[1].gpus[0].name if r[1].gpus else 'cpu'}-{len(r[2])}" for r in TABLE],
)
def test_engine_choice_table(model, profile, installed, engine, family):
    choice = choose_engine([hf(model)], profile, installed, RULES)
    assert (choice.engine, choice.family) == (engine, family), choice.reason
    assert choice.reason


def test_reasons_name_the_rule_that_decided():
    awq_cpu = choose_engine([hf("Qwen--Qwen2-7B-Instruct-AWQ")], CPU, ALL, RULES)
    assert "vllm needs a CUDA device" in awq_cpu.reason
    int2 = choose_engine([hf("synthetic--qwen2-gptq-int2")], CUDA, ALL, RULES)
    assert "quantized Int3/Int4/Int8, this one is Int2" in int2.reason
    no_vllm = choose_engine([hf("Qwen--Qwen2-7B-Instruct")], CUDA, ALL - {"vllm", "sglang"}, RULES)
    assert "but it is not installed" in no_vllm.reason


@pytest.mark.parametrize(
    ("stem", "installed", "engine", "quant", "family"),
    [
        ("qwen2-7b-instruct-q4_k_m", ALL, "xllamacpp", "Q4_K_M", "qwen2"),
        (
            "Meta-Llama-3-8B-Instruct.Q8_0",
            frozenset({"llama-cpp-python", "transformers"}),
            "llama-cpp-python",
            "Q8_0",
            "llama-3",
        ),
    ],
)
def test_gguf_goes_to_llama_cpp(gguf_model, stem, installed, engine, quant, family):
    facts = gguf_model(stem)
    assert (facts.format, facts.quantization) == ("ggufv2", quant)
    choice = choose_engine([facts], CUDA, installed, RULES)
    assert (choice.engine, choice.family) == (engine, family)


def test_gguf_metadata_carries_the_chat_template(gguf_model):
    facts = gguf_model("qwen2-7b-instruct-q4_k_m")
    assert facts.chat_template.startswith("{% for message in messages %}")
    assert facts.context_length == 32768


def test_tiny_forms_fall_back_to_gguf_when_only_llama_cpp_is_installed(gguf_model):
    forms = [hf("meta-llama--Llama-2-7b-chat-hf"), gguf_model("Meta-Llama-3-8B-Instruct.Q8_0")]
    assert choose_engine(forms, CPU, frozenset({"xllamacpp"}), RULES).engine == "xllamacpp"
    assert choose_engine(forms, CPU, NO_GPU_ENGINES, RULES).engine == "transformers"
    assert choose_engine(forms, CPU, NO_GPU_ENGINES, RULES, requested="llama.cpp").model.kind == "gguf"


@pytest.mark.parametrize(
    ("model", "profile", "requested", "message"),
    [
        ("Qwen--Qwen2-7B-Instruct", CPU, "vllm", "vllm needs a CUDA device"),
        ("Qwen--Qwen2-7B-Instruct", MAC, "sglang", "sglang runs on linux only"),
        ("unsloth--llama-3-8b-bnb-4bit", CUDA, "vllm", "vllm takes pytorch/awq/gptq models, this one is bnb"),
        ("openai-community--gpt2", CUDA, "vllm", "family unknown (GPT2LMHeadModel)"),
        ("internlm--internlm2-chat-7b", CUDA, "sglang", "family internlm2 is not in its supported list"),
        ("Qwen--Qwen2-7B-Instruct", CUDA, "llama.cpp", "serves GGUF files"),
        ("Qwen--Qwen2-7B-Instruct", CUDA, "tensorrt", "unknown engine 'tensorrt'"),
    ],
)
def test_explicit_engine_that_cannot_serve_is_an_error_with_the_reason(model, profile, requested, message):
    with pytest.raises(UserError) as e:
        choose_engine([hf(model)], profile, ALL, RULES, requested=requested)
    assert message in str(e.value)


def test_engine_not_installed_names_the_install_command():
    with pytest.raises(UserError) as e:
        choose_engine(
            [hf("Qwen--Qwen2-7B-Instruct")],
            CUDA,
            frozenset({"transformers"}),
            RULES,
            requested="vllm",
            hint_args=" --venv /srv/envs",
        )
    assert "`xinfer-setup install --backend vllm --venv /srv/envs`" in str(e.value)
    with pytest.raises(UserError) as e:
        choose_engine([hf("Qwen--Qwen2-7B-Instruct")], CPU, frozenset(), RULES)
    assert "`xinfer-setup install --backend transformers`" in str(e.value)


def test_quantization_config_samples():
    assert quantization_of(None) == ("pytorch", "none")
    assert quantization_of({"quant_method": "awq", "bits": 4, "version": "gemm"}) == ("awq", "Int4")
    assert quantization_of({"quant_method": "gptq", "bits": 8}) == ("gptq", "Int8")
    assert quantization_of({"quant_method": "fp8", "fmt": "e4m3"}) == ("fp8", "FP8")
    assert quantization_of({"quant_method": "bitsandbytes", "load_in_4bit": True}) == ("bnb", "Int4")
    assert quantization_of({"quant_method": "compressed-tensors"}) == ("compressed-tensors", "unknown")


def test_family_comes_from_the_model_not_its_name(tmp_path):
    # A llama-3 vocabulary in a directory named like Qwen is still llama-3.
    d = tmp_path / "Qwen2-7B-Instruct"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256})
    )
    assert family_of(inspect_model(d), RULES).name == "llama-3"
    gguf_llama = facts_from_gguf_metadata(
        tmp_path / "x.gguf", {"general.architecture": "llama", "llama.vocab_size": 32000}
    )
    assert family_of(gguf_llama, RULES).name == "llama-2"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "missing", "no such model"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "has no config.json"),
        (
            lambda p: (p / "notes.txt").write_text("hello") and p / "notes.txt",
            "neither a model directory nor a GGUF",
        ),
        (
            lambda p: (p / "c").mkdir() or (p / "c" / "config.json").write_text("{}") and p / "c",
            "names no architectures or model_type",
        ),
        (
            lambda p: (p / "bad").mkdir() or (p / "bad" / "config.json").write_text("{nope") and p / "bad",
            "cannot read it as JSON",
        ),
        (
            lambda p: (p / "trunc.gguf").write_bytes(b"GGUF\x03\x00") and p / "trunc.gguf",
            "not a readable GGUF",
        ),
    ],
)
def test_bad_models_are_one_line_user_errors(tmp_path, setup, message):
    with pytest.raises(UserError) as e:
        inspect_model(setup(tmp_path))
    assert message in str(e.value)
    assert "\n" not in str(e.value)
