"""Load the tiny model in one engine, in-process, and generate greedily from token ids.

Runs under the ENGINE's python (its own venv), not ours: it imports only the standard
library and the engine. Prints one line, RESULT_MARKER + JSON, with load time, time to
first token, tokens/s, the device it ran on, the new token ids and (with --logits) the
logits of every prompt position, which the agreement check compares across engines.

    python engine_probe.py transformers --model HF_DIR --prompt-ids 5,6,7 --new-tokens 16
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time

RESULT_MARKER = "XINFER_SMOKE_RESULT "


def _argmax(row) -> int:
    best, best_i = None, 0
    for i, v in enumerate(row):
        if best is None or v > best:
            best, best_i = v, i
    return best_i


def probe_transformers(
    model: str, prompt_ids: list[int], new_tokens: int, want_logits: bool, device: str
) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).to(device).eval()
    load_s = time.perf_counter() - started

    # transformers 5.2x renamed past_key_values to cache (the old name warns until 5.40).
    cache_name = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    ids = torch.tensor([prompt_ids], device=device)
    generated: list[int] = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = lm(ids, use_cache=True)
        prompt_logits = out.logits[0].float()
        token = int(prompt_logits[-1].argmax())
        generated.append(token)
        ttft_s = time.perf_counter() - t0
        past = getattr(out, cache_name)
        t1 = time.perf_counter()
        for _ in range(new_tokens - 1):
            out = lm(torch.tensor([[token]], device=device), use_cache=True, **{cache_name: past})
            past = getattr(out, cache_name)
            token = int(out.logits[0, -1].argmax())
            generated.append(token)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        decode_s = time.perf_counter() - t1

    hardware = {"device": device}
    if device.startswith("cuda"):
        hardware["name"] = torch.cuda.get_device_name(torch.device(device))
        hardware["capability"] = ".".join(map(str, torch.cuda.get_device_capability(torch.device(device))))
    result = {
        "load_s": load_s,
        "ttft_s": ttft_s,
        "decode_s": decode_s,
        "new_ids": generated,
        "hardware": hardware,
        "engine_version": _version("transformers"),
        "torch": torch.__version__,
    }
    if want_logits:
        result["prompt_logits"] = prompt_logits.cpu().tolist()
    return result


def probe_llama_cpp(
    model: str, prompt_ids: list[int], new_tokens: int, want_logits: bool, device: str
) -> dict:
    import llama_cpp

    offload = llama_cpp.llama_supports_gpu_offload() and device != "cpu"
    started = time.perf_counter()
    # F32 KV cache (ggml type 0): the default F16 cache alone moves logits by ~1e-3.
    llm = llama_cpp.Llama(
        model_path=model,
        n_ctx=512,
        n_batch=512,
        n_gpu_layers=-1 if offload else 0,
        logits_all=want_logits,
        type_k=0,
        type_v=0,
        seed=0,
        verbose=True,
        n_threads=os.cpu_count() or 1,
    )
    load_s = time.perf_counter() - started

    t0 = time.perf_counter()
    llm.eval(prompt_ids)
    n = len(prompt_ids)
    prompt_logits = [list(map(float, llm.scores[i])) for i in range(n)] if want_logits else None
    token = _argmax(llm.scores[n - 1])
    generated = [token]
    ttft_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([token])
        token = _argmax(llm.scores[llm.n_tokens - 1])
        generated.append(token)
    decode_s = time.perf_counter() - t1

    result = {
        "load_s": load_s,
        "ttft_s": ttft_s,
        "decode_s": decode_s,
        "new_ids": generated,
        "hardware": {
            "device": "gpu-offload" if offload else "cpu",
            "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
        },
        "engine_version": llama_cpp.__version__,
    }
    if want_logits:
        result["prompt_logits"] = prompt_logits
    return result


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


PROBES = {"transformers": probe_transformers, "llama-cpp-python": probe_llama_cpp}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("engine", choices=sorted(PROBES))
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt-ids", required=True)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--logits", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    prompt_ids = [int(x) for x in args.prompt_ids.split(",")]
    result = PROBES[args.engine](args.model, prompt_ids, args.new_tokens, args.logits, args.device)
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
