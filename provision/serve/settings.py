"""Production launch settings: the dtype the model runs in, where it runs, and the
LaunchSettings an engine adapter turns into its command. Pure; smoke's exactness settings
live in smoke/settings.py, not here.
"""

from __future__ import annotations

from provision.engines.adapters import Dtype, LaunchSettings
from provision.errors import UserError
from provision.profile import HostProfile
from provision.serve.fit import DTYPE_BYTES, Device, Fit, Target, engine_kind

# bf16 needs Ampere (sm_80) or newer; below it the GPU engines run fp16.
BF16_MIN_SM = 80


def target_for(profile: HostProfile, engine: str, gpus: tuple[int, ...] | None) -> Target:
    """The devices this engine would use here: the NVIDIA GPUs (those --gpus names), Apple's
    Metal GPU for llama.cpp and transformers (mps), or the CPU."""
    ram = profile.memory_mb / 1024 if profile.memory_mb else None
    nvidia = list(profile.nvidia_gpus) if profile.nvidia is not None else []
    if gpus is not None:
        present = {g.index if g.index is not None else i: g for i, g in enumerate(nvidia)}
        missing = [i for i in gpus if i not in present]
        if missing:
            have = ", ".join(str(i) for i in sorted(present)) or "none"
            raise UserError(
                f"--gpus {','.join(map(str, gpus))}: no GPU {', '.join(map(str, missing))} here "
                f"(NVIDIA GPUs: {have})"
            )
        nvidia = [present[i] for i in gpus]
    if nvidia:
        return Target(
            "cuda",
            tuple(
                Device(g.name, (g.memory_mb or 0) / 1024, g.index if g.index is not None else i)
                for i, g in enumerate(nvidia)
            ),
            ram,
        )
    apple = profile.apple_gpus
    if apple and engine_kind(engine) in ("llama-cpp", "transformers"):
        mem = apple[0].memory_mb or profile.memory_mb or 0
        return Target("metal", (Device(apple[0].name, mem / 1024),), ram)
    return Target("cpu", (), ram)


def run_dtype(
    checkpoint_dtype: str | None, target: Target, profile: HostProfile, requested: str | None
) -> tuple[Dtype, str]:
    """(dtype, why): the model's own torch_dtype where the hardware has it."""
    if requested:
        if requested not in DTYPE_BYTES:
            raise UserError(f"--dtype {requested}: choose float32, float16 or bfloat16")
        return requested, "--dtype"  # type: ignore[return-value]
    own = checkpoint_dtype if checkpoint_dtype in DTYPE_BYTES else None
    if target.kind == "cpu":
        return "float32", "CPU: float32 (bf16/fp16 matmuls are slow or missing on most CPUs)"
    if target.kind == "metal":
        return "float16", "Apple GPU: float16"
    sms = [g.sm for g in profile.nvidia_gpus if g.sm is not None]
    bf16_ok = bool(sms) and min(sms) >= BF16_MIN_SM
    if own == "bfloat16" and not bf16_ok:
        sm = min(sms) if sms else "?"
        return "float16", f"the model is bfloat16 but sm_{sm} < sm_{BF16_MIN_SM} has no bf16"
    if own in ("bfloat16", "float16"):
        return own, "the model's own torch_dtype"  # type: ignore[return-value]
    half: Dtype = "bfloat16" if bf16_ok else "float16"
    return half, f"the model is {own or 'of unstated dtype'}; {half} on the GPU"


def launch_settings(
    engine: str,
    served_name: str,
    host: str,
    port: int,
    target: Target,
    fit: Fit,
    dtype: Dtype,
    memory_fraction: float | None,
) -> LaunchSettings:
    """What serve launches: vLLM/SGLang with their own memory share unless asked, CUDA graphs on,
    tensor parallel across the GPUs the fit spans; llama.cpp with every layer on the GPU and an
    f16 KV cache; transformers in the model's dtype, spread by device_map when it spans GPUs. The
    tensor-parallel size is the fit's (the recipe says which engines span GPUs that way)."""
    gpu = target.kind in ("cuda", "metal")
    kind = engine_kind(engine)
    return LaunchSettings(
        served_name=served_name,
        host=host,
        port=port,
        gpu=gpu,
        dtype="auto" if kind == "llama-cpp" else dtype,
        context_length=fit.context_length,
        tensor_parallel=fit.tensor_parallel,
        # Only engines with a memory pool (vLLM, SGLang) have a flag for it; other adapters ignore it.
        gpu_memory_fraction=memory_fraction,
        enforce_eager=False,
        f32_kv_cache=False,
    )
