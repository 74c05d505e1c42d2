"""The smoke run: every engine loads the tiny model, generates, serves it, answers, stops.

Input is an explicit mapping {backend: python executable of its environment} and the host
profile (for skip reasons and the device). Per engine, in order:
  1. can it run on this hardware at all (vLLM/SGLang need CUDA) -> skip with the reason;
  2. in-process load+generate from the reference prompt's token ids (engine_probe.py);
  3. its own OpenAI server on a free 127.0.0.1 port, one chat completion and one streamed,
     with the official openai client, each checked against the reference answer;
  4. a clean stop.
Then transformers and llama.cpp are held to the same greedy ids and prompt logits.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from provision.engines.adapters import ADAPTERS, EngineAdapter, has_cuda_device
from provision.engines.engine_probe import RESULT_MARKER
from provision.engines.server import ManagedServer, ServerError, free_port, offline_env
from provision.errors import OperationFailed
from provision.profile import HostProfile
from provision.tiny_model import TinyModel
from smoke.checks import Agreement, AnswerError, check_chat_answer, compare_greedy, llama_cpp_placement
from smoke.reference import TinyReference
from smoke.settings import smoke_launch

HOST = "127.0.0.1"
USER_MESSAGE = "Hello! What is your name?"
MAX_TOKENS = 16
PROBE_TIMEOUT_S = 300.0
READY_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 120.0
LOG_TAIL_LINES = 15


@dataclass
class EngineResult:
    backend: str
    status: str  # pass | fail | skip
    reason: str
    python: str | None = None
    hardware: str | None = None
    load_s: float | None = None  # in-process model load
    engine_tokens_per_s: float | None = None  # in-process greedy decode
    ready_s: float | None = None  # server start to first good GET /v1/models
    ttft_s: float | None = None  # streamed chat request to its first content
    tokens_per_s: float | None = None  # non-streamed chat: completion tokens / request time
    answer: str | None = None
    log_path: str | None = None
    log_tail: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SmokeReport:
    model: dict
    results: list[EngineResult]
    agreement: list[Agreement] = field(default_factory=list)
    total_s: float = 0.0

    @property
    def ok(self) -> bool:
        engines_ok = all(r.status != "fail" for r in self.results)
        return engines_ok and all(a.status == "pass" for a in self.agreement)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "total_s": round(self.total_s, 3), "model": self.model,
                "engines": [r.to_dict() for r in self.results],
                "agreement": [a.to_dict() for a in self.agreement]}


class EngineFailed(OperationFailed):
    def __init__(self, reason: str, log_tail: str = ""):
        super().__init__(reason)
        self.log_tail = log_tail


def run_smoke(pythons: Mapping[str, Path], profile: HostProfile, model: TinyModel, work_dir: Path,
              model_overrides: Mapping[str, Path] | None = None) -> SmokeReport:
    """Smoke-test each backend in pythons; model_overrides replaces one engine's model file."""
    started = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    reference = TinyReference(model.hf_dir)
    prompt_ids = reference.encode_chat(USER_MESSAGE)
    expected = reference.greedy(prompt_ids, MAX_TOKENS)
    expected_text = reference.chat_text(expected)
    gpu = has_cuda_device(profile)
    results, probes = [], {}
    for backend, python in pythons.items():
        adapter = ADAPTERS.get(backend)
        if adapter is None:
            continue  # xinference itself is not an engine
        path = Path((model_overrides or {}).get(backend) or adapter.model_path(model))
        result, probe = _run_engine(adapter, Path(python), path, profile, gpu, prompt_ids, expected_text,
                                    work_dir)
        results.append(result)
        if probe is not None:
            probes[backend] = probe
    agreement = _agreements(probes, expected)
    return SmokeReport(_model_info(model), results, agreement, time.perf_counter() - started)


def _run_engine(adapter: EngineAdapter, python: Path, model_path: Path, profile: HostProfile, gpu: bool,
                prompt_ids: list[int], expected_text: str,
                work_dir: Path) -> tuple[EngineResult, dict | None]:
    result = EngineResult(adapter.name, "pass", "", python=str(python))
    runnable, why = adapter.can_run(profile)
    if not runnable:
        result.status, result.reason = "skip", why
        return result, None
    probe = None
    try:
        if not python.exists():
            raise EngineFailed(f"its python {python} does not exist")
        if not model_path.exists():
            raise EngineFailed(f"model {model_path} does not exist")
        probe = _probe(adapter, python, model_path, prompt_ids, gpu, work_dir, result)
        _serve_and_ask(adapter, python, model_path, gpu, expected_text if adapter.float32 else None,
                       work_dir, result)
        result.reason = "served and answered" + (" the reference answer" if adapter.float32 else "")
    except EngineFailed as e:
        result.status, result.reason, result.log_tail = "fail", str(e), e.log_tail or None
    except Exception as e:  # noqa: BLE001 - one engine's surprise must not stop the others' reports
        result.status, result.reason = "fail", f"unexpected {type(e).__name__}: {_one_line(e)}"
    return result, probe


def _probe(adapter: EngineAdapter, python: Path, model_path: Path, prompt_ids: list[int], gpu: bool,
           work_dir: Path, result: EngineResult) -> dict | None:
    argv = adapter.probe_command(python, model_path, prompt_ids, MAX_TOKENS, logits=True, gpu=gpu)
    if argv is None:
        return None
    log_path = work_dir / f"{adapter.name}-probe.log"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=offline_env(),
                              timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise EngineFailed(f"load+generate did not finish in {PROBE_TIMEOUT_S:.0f} s") from None
    log_path.write_text(done.stdout + done.stderr)
    tail = "\n".join(done.stderr.strip().splitlines()[-LOG_TAIL_LINES:])
    line = next((x for x in reversed(done.stdout.splitlines()) if x.startswith(RESULT_MARKER)), None)
    if done.returncode != 0 or line is None:
        last = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise EngineFailed(f"load+generate failed (exit {done.returncode}): {last[0][:300]}", tail)
    probe = json.loads(line[len(RESULT_MARKER):])
    result.load_s = probe["load_s"]
    if probe["decode_s"] > 0:
        result.engine_tokens_per_s = (len(probe["new_ids"]) - 1) / probe["decode_s"]
    hw = probe.get("hardware", {})
    if adapter.model_format == "gguf":
        result.hardware = llama_cpp_placement(done.stderr)
    else:
        result.hardware = " ".join(str(hw[k]) for k in ("device", "name") if hw.get(k))
    return probe


def _serve_and_ask(adapter: EngineAdapter, python: Path, model_path: Path, gpu: bool,
                   expected_text: str | None, work_dir: Path, result: EngineResult) -> None:
    import openai

    api_key = f"sk-smoke-{secrets.token_hex(8)}" if adapter.supports_api_key else None
    port = free_port(HOST)
    argv = adapter.server_command(python, model_path, smoke_launch(adapter, HOST, port, gpu), api_key)
    server = ManagedServer(argv, host=HOST, port=port, log_path=work_dir / f"{adapter.name}-server.log",
                           api_key=api_key, ready_timeout_s=READY_TIMEOUT_S,
                           env=adapter.server_env(work_dir / adapter.name))
    result.log_path = str(server.log_path)
    try:
        with server:
            result.ready_s = server.ready_s
            client = openai.OpenAI(base_url=server.base_url, api_key=api_key or "none",
                                   timeout=REQUEST_TIMEOUT_S, max_retries=0)
            # transformers serve 5.17 lists only hub-cache models, not the local one it serves.
            served = server.models[0] if server.models else adapter.served_model(model_path)
            if served is None:
                raise AnswerError("GET /v1/models lists no model")
            _ask(client, served, dict(adapter.extra_body), expected_text, result)
    except ServerError as e:
        raise EngineFailed(f"server: {e}", e.log_tail) from None
    except (openai.OpenAIError, AnswerError) as e:
        raise EngineFailed(f"chat: {_one_line(e)}", server.log_tail(LOG_TAIL_LINES)) from None
    stopped = server.stop_result  # set by leaving the `with`
    if stopped is not None and not stopped.clean:
        code = stopped.returncode
        raise EngineFailed(f"server did not stop cleanly after SIGTERM (exit {code})",
                           server.log_tail(LOG_TAIL_LINES))
    if result.hardware is None:
        log = server.log_path.read_text(errors="replace")
        result.hardware = llama_cpp_placement(log) if adapter.model_format == "gguf" else None


def _ask(client, model_name: str, extra_body: dict, expected_text: str | None, result: EngineResult) -> None:
    messages = [{"role": "user", "content": USER_MESSAGE}]
    greedy = {"max_tokens": MAX_TOKENS, "temperature": 0, "extra_body": extra_body or None}
    t0 = time.perf_counter()
    reply = client.chat.completions.create(model=model_name, messages=messages, **greedy)
    elapsed = time.perf_counter() - t0
    choice = reply.choices[0] if reply.choices else None
    text = choice.message.content if choice else None
    completion_tokens = reply.usage.completion_tokens if reply.usage else None
    if completion_tokens:
        result.tokens_per_s = completion_tokens / elapsed

    parts, first = [], None
    t0 = time.perf_counter()
    stream = client.chat.completions.create(model=model_name, messages=messages, stream=True, **greedy)
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            first = first if first is not None else time.perf_counter() - t0
            parts.append(delta)
    result.ttft_s = first
    result.answer = text
    check_chat_answer(text, "".join(parts), choice.finish_reason if choice else None, completion_tokens,
                      MAX_TOKENS, expected_text)


def _agreements(probes: dict[str, dict], expected) -> list[Agreement]:
    """Each in-process engine against the numpy reference, and transformers against llama.cpp."""
    out = [compare_greedy(name, "reference", p["new_ids"], expected.new_ids, p.get("prompt_logits"),
                          expected.prompt_logits) for name, p in probes.items()]
    tf, lc = probes.get("transformers"), probes.get("llama-cpp-python")
    if tf and lc:
        out.append(compare_greedy("transformers", "llama-cpp-python", tf["new_ids"], lc["new_ids"],
                                  tf.get("prompt_logits"), lc.get("prompt_logits")))
    return out


def _model_info(model: TinyModel) -> dict:
    return {"key": model.key, "hf_dir": str(model.hf_dir), "gguf": str(model.gguf_path),
            "hf_bytes": model.hf_bytes, "gguf_bytes": model.gguf_bytes, "vocab_size": model.vocab_size,
            "generated": model.generated, "generate_s": round(model.generate_s, 3)}


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:400]
