"""The measuring half of smoke/gpu_check.sh: tiny model, transformers and llama.cpp on the GPU.

Needs only numpy, gguf, tokenizers, safetensors here (no click, no openai), so it runs on a
bare GPU box with PYTHONPATH=<repo>. Prints one JSON summary; exits 1 with the reasons when a
check fails. `--cpu` runs the same checks without a GPU (how it is tested on CPU machines).

    python -m smoke.gpu_report --python VENV/bin/python --out DIR [--cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from provision.engines.adapters import ADAPTERS
from provision.engines.engine_probe import RESULT_MARKER
from provision.tiny_model import ensure_tiny_model
from smoke.checks import CPU_LOGIT_TOLERANCE, GPU_LOGIT_TOLERANCE, compare_greedy, llama_cpp_placement
from smoke.reference import TinyReference

NEW_TOKENS = 16


def _probe(python: str, backend: str, model: Path, prompt_ids: list[int], gpu: bool) -> tuple[dict, str]:
    argv = ADAPTERS[backend].probe_command(Path(python), model, prompt_ids, NEW_TOKENS, logits=True, gpu=gpu)
    if argv is None:
        raise ValueError(f"{backend} has no in-process probe")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    line = next((x for x in done.stdout.splitlines() if x.startswith(RESULT_MARKER)), None)
    if done.returncode != 0 or line is None:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise RuntimeError(f"{backend} load+generate failed (exit {done.returncode}):\n{tail}")
    return json.loads(line[len(RESULT_MARKER) :]), done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", required=True, help="python with torch, transformers and llama_cpp")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--cpu", action="store_true", help="check on CPU (no GPU expected)")
    args = parser.parse_args(argv)
    gpu = not args.cpu
    summary: dict = {"gpu_expected": gpu, "checks": {}, "failures": []}

    def check(name: str, ok: bool, detail: str) -> None:
        summary["checks"][name] = {"ok": bool(ok), "detail": detail}
        if not ok:
            summary["failures"].append(f"{name}: {detail}")

    model = ensure_tiny_model(args.out / "models")
    summary["model"] = {
        "generate_s": round(model.generate_s, 3),
        "hf_bytes": model.hf_bytes,
        "gguf_bytes": model.gguf_bytes,
        "vocab_size": model.vocab_size,
    }
    ref = TinyReference(model.hf_dir)
    prompt_ids = ref.encode_chat("Hello! What is your name?")
    expected = ref.greedy(prompt_ids, NEW_TOKENS)
    tolerance = GPU_LOGIT_TOLERANCE if gpu else CPU_LOGIT_TOLERANCE

    for backend, path in (("transformers", model.hf_dir), ("llama-cpp-python", model.gguf_path)):
        try:
            started = time.perf_counter()
            run, log = _probe(args.python, backend, path, prompt_ids, gpu)
            wall = time.perf_counter() - started
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            check(f"{backend}.runs", False, str(e))
            continue
        (args.out / f"{backend}-probe.log").write_text(log)
        hw = run["hardware"]
        if backend == "transformers":
            device = " ".join(str(hw[k]) for k in ("device", "name", "capability") if hw.get(k))
            check("transformers.device", hw["device"].startswith("cuda") == gpu, device)
        else:
            device = llama_cpp_placement(log)
            n_layers = model.spec.num_layers + 1  # llama.cpp counts the output layer too
            want = f"{n_layers}/{n_layers} layers offloaded" if gpu else "cpu"
            check("llama-cpp-python.offload", want in device if gpu else device == "cpu", device)
            check(
                "llama-cpp-python.gpu_build",
                hw.get("gpu_offload_supported") == gpu,
                f"llama_supports_gpu_offload() = {hw.get('gpu_offload_supported')}",
            )
        verdict = compare_greedy(
            backend,
            "reference",
            run["new_ids"],
            expected.new_ids,
            run["prompt_logits"],
            expected.prompt_logits,
            tolerance=tolerance,
        )
        check(f"{backend}.agrees_with_reference", verdict.status == "pass", verdict.reason)
        decode = run["decode_s"]
        summary[backend] = {
            "version": run.get("engine_version"),
            "device": device,
            "load_s": round(run["load_s"], 4),
            "ttft_s": round(run["ttft_s"], 4),
            "tokens_per_s": round((NEW_TOKENS - 1) / decode, 1) if decode > 0 else None,
            "process_wall_s": round(wall, 2),
            "max_logit_diff_vs_reference": verdict.max_logit_diff,
        }
        if backend == "transformers" and run.get("torch"):
            summary[backend]["torch"] = run["torch"]

    summary["ok"] = not summary["failures"]
    print(json.dumps(summary, indent=2))
    if summary["failures"]:
        print("gpu_check: FAILED\n  " + "\n  ".join(summary["failures"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
