"""Cross-engine agreement: transformers (float32) and llama.cpp (F32 GGUF, F32 KV cache) give the
numpy reference's greedy ids and prompt logits, through the real engines in their own env."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from provision.engines.adapters import ADAPTERS
from provision.engines.engine_probe import RESULT_MARKER
from provision.tiny_model import ensure_tiny_model
from smoke.checks import compare_greedy
from smoke.reference import TinyReference


def _probe(python: Path, backend: str, model_path: Path, prompt_ids: list[int]) -> dict:
    argv = ADAPTERS[backend].probe_command(python, model_path, prompt_ids, 12, logits=True)
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith(RESULT_MARKER))
    return json.loads(line[len(RESULT_MARKER) :])


@pytest.mark.slow
def test_transformers_and_llama_cpp_agree_with_the_reference(_engine_pythons, tmp_path):
    model = ensure_tiny_model(tmp_path)
    ref = TinyReference(model.hf_dir)
    prompt_ids = ref.encode("The quick brown fox jumps over the lazy dog")
    expected = ref.greedy(prompt_ids, 12)

    tf = _probe(_engine_pythons["transformers"], "transformers", model.hf_dir, prompt_ids)
    lc = _probe(_engine_pythons["llama-cpp-python"], "llama-cpp-python", model.gguf_path, prompt_ids)

    for name, run in (("transformers", tf), ("llama-cpp-python", lc)):
        verdict = compare_greedy(
            name, "reference", run["new_ids"], expected.new_ids, run["prompt_logits"], expected.prompt_logits
        )
        assert verdict.status == "pass", verdict.reason
        assert verdict.tokens_compared == 12
    both = compare_greedy(
        "transformers",
        "llama-cpp-python",
        tf["new_ids"],
        lc["new_ids"],
        tf["prompt_logits"],
        lc["prompt_logits"],
    )
    assert both.status == "pass", both.reason
    assert both.max_logit_diff < 1e-4


@pytest.mark.slow
def test_a_wrong_conversion_is_caught(_engine_pythons, tmp_path, monkeypatch):
    """A GGUF written WITHOUT the rotary permutation loads and talks, but disagrees."""
    from provision import tiny_model

    model = ensure_tiny_model(tmp_path / "good")
    spec, corpus = model.spec, tiny_model.CORPUS_PATH.read_text()
    tokenizer = tiny_model.train_tokenizer(corpus, spec.vocab_target)
    weights = tiny_model.make_weights(spec, tokenizer.get_vocab_size())
    bad = tmp_path / "unpermuted.gguf"
    with monkeypatch.context() as m:
        m.setattr(tiny_model, "rotary_to_llama_cpp", lambda w, n: w)
        tiny_model.write_gguf(bad, spec, weights, tokenizer)

    ref = TinyReference(model.hf_dir)
    prompt_ids = ref.encode("One, two, three, four, five, six, seven")
    expected = ref.greedy(prompt_ids, 12)
    lc = _probe(_engine_pythons["llama-cpp-python"], "llama-cpp-python", bad, prompt_ids)
    verdict = compare_greedy(
        "llama-cpp-python",
        "reference",
        lc["new_ids"],
        expected.new_ids,
        lc["prompt_logits"],
        expected.prompt_logits,
    )
    assert verdict.status == "fail"
    assert verdict.max_logit_diff > 1e-2


@pytest.mark.slow
def test_xllamacpp_server_gives_the_reference_ids(_engine_pythons, tmp_path):
    """xllamacpp has no in-process probe: its llama.cpp server returns the greedy ids itself
    (/completion with the prompt as ids, return_tokens), compared with the reference's."""
    from provision.engines.server import ManagedServer, free_port
    from provision.serve.keys import KEY_FILE_ENV, keyed_command, write_key_file
    from smoke.server_tokens import SERVER_GREEDY_IDS
    from smoke.settings import smoke_launch

    model = ensure_tiny_model(tmp_path)
    ref = TinyReference(model.hf_dir)
    prompt_ids = ref.encode("The quick brown fox jumps over the lazy dog")
    expected = ref.greedy(prompt_ids, 12)
    adapter = ADAPTERS["xllamacpp"]
    port = free_port()
    argv = adapter.server_command(
        _engine_pythons["xllamacpp"], model.gguf_path, smoke_launch(adapter, "127.0.0.1", port, False)
    )
    key_file = write_key_file(tmp_path / "api-key", "sk-agree")
    with ManagedServer(
        keyed_command(argv, adapter.api_key_flag or ""),
        host="127.0.0.1",
        port=port,
        log_path=tmp_path / "xl.log",
        api_key="sk-agree",
        env={KEY_FILE_ENV: str(key_file)},
    ) as server:
        ids = SERVER_GREEDY_IDS["xllamacpp"](server.base_url, "tiny", "sk-agree", prompt_ids, 12)
    verdict = compare_greedy("xllamacpp", "reference", ids, expected.new_ids)
    assert verdict.status == "pass" and verdict.tokens_compared == 12, verdict.reason
