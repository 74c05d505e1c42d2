"""Engine adapters: how each backend is loaded in-process, served, and whether it can run here.

One adapter per plan backend name. Every command starts with the python of the
environment the engine was installed into, never ours. Served names are "tiny" where
the server takes an alias (transformers serve names the model by its path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provision.profile import HostProfile
from smoke.tiny_model import TinyModel

SMOKE_DIR = Path(__file__).parent
ENGINE_PROBE = SMOKE_DIR / "engine_probe.py"
XLLAMACPP_SERVE = SMOKE_DIR / "xllamacpp_serve.py"
SERVED_NAME = "tiny"
N_CTX = 2048

# vLLM and SGLang kernels need Turing or newer (their documented minimum).
MIN_CUDA_SM_FOR_GPU_ONLY_ENGINES = 75


def has_cuda_device(profile: HostProfile) -> bool:
    return bool(profile.nvidia_gpus) and profile.nvidia is not None


@dataclass(frozen=True)
class EngineAdapter:
    name: str
    model_format: str  # "hf" (a Hugging Face directory) or "gguf" (one file)
    # Name of the in-process load+generate probe in engine_probe.PROBES, or None.
    probe: str | None = None
    supports_api_key: bool = True
    # True when the engine computes in float32, so its greedy answer must equal the reference.
    float32: bool = True
    # Fields beyond OpenAI's that a chat request needs to be plain greedy on this server.
    extra_body: tuple[tuple[str, object], ...] = ()

    def model_path(self, model: TinyModel) -> Path:
        return model.hf_dir if self.model_format == "hf" else model.gguf_path

    def can_run(self, profile: HostProfile) -> tuple[bool, str]:
        return True, "runs on CPU" if not has_cuda_device(profile) else "runs on the CUDA device"

    def server_command(self, python: Path, model: Path, host: str, port: int, api_key: str | None,
                       gpu: bool = False) -> list[str]:
        raise NotImplementedError

    def server_env(self, work_dir: Path) -> dict[str, str]:
        """Environment variables the server process needs beyond offline_env(), given a scratch dir."""
        return {}

    def served_model(self, model: Path) -> str | None:
        """The model name the server answers to when GET /v1/models does not list it."""
        return None

    def probe_command(self, python: Path, model: Path, prompt_ids: list[int], new_tokens: int,
                      logits: bool, gpu: bool = False) -> list[str] | None:
        if self.probe is None:
            return None
        argv = [str(python), str(ENGINE_PROBE), self.probe, "--model", str(model),
                "--prompt-ids", ",".join(map(str, prompt_ids)), "--new-tokens", str(new_tokens),
                "--device", "auto" if gpu else "cpu"]
        return [*argv, "--logits"] if logits else argv


class TransformersAdapter(EngineAdapter):
    def served_model(self, model: Path) -> str | None:
        return str(model)  # it serves the positional model under its path

    def server_env(self, work_dir: Path) -> dict[str, str]:
        # `transformers serve` (5.17) answers GET /v1/models by scanning the hub cache and fails
        # with CacheNotFound when it is missing (a fresh machine); an empty one of our own keeps
        # it offline and answering.
        hub_cache = work_dir / "hf-hub-cache"
        hub_cache.mkdir(parents=True, exist_ok=True)
        return {"HF_HUB_CACHE": str(hub_cache)}

    def server_command(self, python, model, host, port, api_key, gpu=False):
        # `transformers serve` (5.x) preloads the positional model and serves it under its path.
        # It has no API key option; supports_api_key is False so none is passed.
        return [str(python), "-m", "transformers.cli.transformers", "serve", str(model),
                "--host", host, "--port", str(port), "--device", "cuda" if gpu else "cpu",
                "--dtype", "float32", "--log-level", "info"]


class LlamaCppPythonAdapter(EngineAdapter):
    def server_command(self, python, model, host, port, api_key, gpu=False):
        # type_k/type_v 0 = F32 KV cache, so the answer equals the float32 reference exactly;
        # chat_format is left unset: the server then uses the GGUF's own Jinja template.
        argv = [str(python), "-m", "llama_cpp.server", "--model", str(model), "--model_alias", SERVED_NAME,
                "--host", host, "--port", str(port), "--n_ctx", str(N_CTX),
                "--n_gpu_layers", "-1" if gpu else "0", "--type_k", "0", "--type_v", "0"]
        return [*argv, "--api_key", api_key] if api_key else argv


class XllamacppAdapter(EngineAdapter):
    def server_command(self, python, model, host, port, api_key, gpu=False):
        argv = [str(python), str(XLLAMACPP_SERVE), "--model", str(model), "--alias", SERVED_NAME,
                "--host", host, "--port", str(port), "--n-ctx", str(N_CTX),
                "--n-gpu-layers", "-1" if gpu else "0", "--f32-kv-cache"]
        return [*argv, "--api-key", api_key] if api_key else argv


class _GpuOnlyAdapter(EngineAdapter):
    def can_run(self, profile: HostProfile) -> tuple[bool, str]:
        if profile.os.system != "linux":
            return False, f"{self.name} runs on Linux only (this is {profile.os.system})"
        if not has_cuda_device(profile):
            return False, f"{self.name} needs a CUDA device; none found"
        sms = [g.sm for g in profile.nvidia_gpus if g.sm is not None]
        if sms and max(sms) < MIN_CUDA_SM_FOR_GPU_ONLY_ENGINES:
            cc = max(g.compute_capability for g in profile.nvidia_gpus if g.compute_capability)
            return False, f"{self.name} needs compute capability >= 7.5; the best GPU here has {cc}"
        return True, "runs on the CUDA device"


class VllmAdapter(_GpuOnlyAdapter):
    def server_command(self, python, model, host, port, api_key, gpu=True):
        # float16: vLLM's attention backends do not take float32; eager mode skips CUDA-graph
        # capture, which would cost more than the whole smoke; a small memory share is plenty.
        argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                "--served-model-name", SERVED_NAME, "--host", host, "--port", str(port),
                "--dtype", "float16", "--max-model-len", str(N_CTX), "--enforce-eager",
                "--gpu-memory-utilization", "0.2"]
        return [*argv, "--api-key", api_key] if api_key else argv


class SglangAdapter(_GpuOnlyAdapter):
    def server_command(self, python, model, host, port, api_key, gpu=True):
        argv = [str(python), "-m", "sglang.launch_server", "--model-path", str(model),
                "--served-model-name", SERVED_NAME, "--host", host, "--port", str(port),
                "--dtype", "float16", "--context-length", str(N_CTX), "--disable-cuda-graph",
                "--mem-fraction-static", "0.2"]
        return [*argv, "--api-key", api_key] if api_key else argv


ADAPTERS: dict[str, EngineAdapter] = {
    "transformers": TransformersAdapter("transformers", "hf", probe="transformers", supports_api_key=False),
    # llama_cpp.server applies repeat_penalty 1.1 unless told otherwise, even at temperature 0.
    "llama-cpp-python": LlamaCppPythonAdapter("llama-cpp-python", "gguf", probe="llama-cpp-python",
                                              extra_body=(("repeat_penalty", 1.0),)),
    "xllamacpp": XllamacppAdapter("xllamacpp", "gguf"),
    "vllm": VllmAdapter("vllm", "hf", float32=False),
    "sglang": SglangAdapter("sglang", "hf", float32=False),
}
