"""smoke's launch settings: exactness and a quick start, not production.

float32 everywhere an engine computes in it (its greedy answer must equal the numpy reference
token for token), an F32 KV cache for llama.cpp for the same reason, a short context, eager
mode (CUDA-graph capture would cost more than the whole smoke) and a small share of a GPU.
vLLM's and SGLang's GPU attention kernels take no float32, so they run float16 there.
"""

from __future__ import annotations

from provision.engines.adapters import EngineAdapter, LaunchSettings

SERVED_NAME = "tiny"
CONTEXT_LENGTH = 2048
GPU_MEMORY_FRACTION = 0.2


def smoke_launch(adapter: EngineAdapter, host: str, port: int, gpu: bool) -> LaunchSettings:
    return LaunchSettings(
        served_name=SERVED_NAME,
        host=host,
        port=port,
        gpu=gpu,
        dtype="float32" if adapter.float32 else "float16",
        context_length=CONTEXT_LENGTH,
        gpu_memory_fraction=GPU_MEMORY_FRACTION if gpu else None,
        enforce_eager=True,
        f32_kv_cache=True,
    )
