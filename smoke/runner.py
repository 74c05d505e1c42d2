"""The smoke run: every engine loads the tiny model, generates, serves it, answers, stops.

Input is an explicit mapping {backend: python executable of its environment} and the host
profile (for skip reasons and the device). Per engine:
  1. can it run on this hardware at all (SGLang needs CUDA) -> skip with the reason;
  2. in-process load+generate from the reference prompt's token ids (engine_probe.py), where
     the engine has such a probe;
  3. its own OpenAI server on a free 127.0.0.1 port, one chat completion and one streamed,
     with the official openai client, each checked against the reference answer; engines
     without a probe (vLLM, xllamacpp) also give their greedy token ids through the server;
  4. a clean stop.
Xinference, when installed, serves the tiny model through its transformers and llama.cpp
engines (smoke/xinference_check.py).

Every engine's probe and server, and Xinference, start at once and each is bounded by its
own readiness: the run takes as long as its slowest engine, not the sum. Then every engine
that computes in float32 is held to the reference's greedy ids (and prompt logits where it
gives them), and transformers and llama.cpp to each other; the report names the engines that
were not (half precision on a GPU) rather than let them pass as compared.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from provision.engines import server as server_mod
from provision.engines.adapters import ADAPTERS, EngineAdapter, has_cuda_device
from provision.engines.engine_probe import RESULT_MARKER
from provision.engines.server import ManagedServer, ServerError, free_port, offline_env
from provision.errors import OperationFailed
from provision.profile import HostProfile
from provision.redact import redact
from provision.serve.keys import KEY_FILE_ENV, keyed_command, write_key_file
from provision.tiny_model import TinyModel
from smoke.checks import (
    CPU_LOGIT_TOLERANCE,
    GPU_LOGIT_TOLERANCE,
    Agreement,
    AnswerError,
    check_chat_answer,
    compare_greedy,
    llama_cpp_placement,
)
from smoke.reference import TinyReference
from smoke.report import EngineResult, NotCompared, SmokeReport
from smoke.server_tokens import SERVER_GREEDY_IDS
from smoke.settings import smoke_env, smoke_launch

__all__ = ["EngineResult", "SmokeReport", "run_smoke"]

HOST = "127.0.0.1"
USER_MESSAGE = "Hello! What is your name?"
MAX_TOKENS = 16
PROBE_TIMEOUT_S = 300.0
READY_TIMEOUT_S = 300.0
# vLLM's CPU start spawns its EngineCore, which imports vLLM and torch again: minutes on a busy
# 2-core machine (146-221 s measured here under load), against ~35 s on an idle one.
READY_TIMEOUT_S_BY_ENGINE = {"vllm": 600.0}
REQUEST_TIMEOUT_S = 120.0
LOG_TAIL_LINES = 15


class EngineFailed(OperationFailed):
    def __init__(self, reason: str, log_tail: str = ""):
        super().__init__(reason)
        self.log_tail = log_tail


class Cancelled(Exception):
    """The run was interrupted: a worker stops before starting anything new."""


@dataclass
class _Tasks:
    """What the worker threads share: the expected answer, the stop flag, the probes running."""

    prompt_ids: list[int]
    expected_text: str
    work_dir: Path
    gpu: bool
    cancelled: threading.Event
    probes: set[subprocess.Popen]
    lock: threading.Lock

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled


def run_smoke(
    pythons: Mapping[str, Path],
    profile: HostProfile,
    model: TinyModel,
    work_dir: Path,
    model_overrides: Mapping[str, Path] | None = None,
) -> SmokeReport:
    """Smoke-test each backend in pythons; model_overrides replaces one engine's model file."""
    started = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    reference = TinyReference(model.hf_dir)
    prompt_ids = reference.encode_chat(USER_MESSAGE)
    expected = reference.greedy(prompt_ids, MAX_TOKENS)
    gpu = has_cuda_device(profile)
    tasks = _Tasks(
        prompt_ids, reference.chat_text(expected), work_dir, gpu, threading.Event(), set(), threading.Lock()
    )

    rows: list[Callable[[], list[EngineResult]]] = []
    greedy: dict[str, tuple[list[int], list | None]] = {}  # exact engine -> (new ids, prompt logits)
    for backend, python in pythons.items():
        if backend == "xinference":
            rows.append(_xinference_job(Path(python), model, tasks))
            continue
        adapter = ADAPTERS.get(backend)
        if adapter is None:
            continue
        path = Path((model_overrides or {}).get(backend) or adapter.model_path(model))
        rows.append(_engine_job(adapter, Path(python), path, profile, tasks, greedy))

    results = [r for rows_of_one in _run_all(rows, tasks) for r in rows_of_one]
    tolerance = GPU_LOGIT_TOLERANCE if gpu else CPU_LOGIT_TOLERANCE
    agreement = _agreements(greedy, expected, tolerance)
    report = SmokeReport(_model_info(model), results, agreement, time.perf_counter() - started)
    report.not_compared = not_compared(results, gpu)
    return report


def not_compared(results: list[EngineResult], gpu: bool) -> list[NotCompared]:
    """Engines that served and answered but compute in half precision here, so their answers were
    checked for form only: the report says so rather than claim they agree token for token."""
    out = []
    for r in results:
        adapter = ADAPTERS.get(r.backend)
        if r.status != "pass" or adapter is None or adapter.computes_float32(gpu):
            continue
        dtype = smoke_launch(adapter, HOST, 0, gpu).dtype
        out.append(
            NotCompared(
                r.backend,
                dtype,
                f"runs {dtype} here (its {'GPU' if gpu else 'CPU'} kernels take no float32): its answer "
                "was checked for form (non-empty, finish reason, token count, stream equal to reply), "
                "not token for token against the float32 reference",
            )
        )
    return out


def _run_all(jobs: list[Callable[[], list[EngineResult]]], tasks: _Tasks) -> list[list[EngineResult]]:
    """Each job in its own thread; on Ctrl-C/SIGTERM every server and probe is stopped first."""
    if not jobs:
        return []
    pool = ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="smoke")
    futures: list[Future] = [pool.submit(job) for job in jobs]
    try:
        while True:
            done, pending = wait(futures, timeout=0.5, return_when=FIRST_EXCEPTION)
            if not pending:
                break
    except BaseException:
        _cancel(tasks)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [f.result() for f in futures]


def _cancel(tasks: _Tasks) -> None:
    tasks.cancelled.set()
    with tasks.lock:
        for p in list(tasks.probes):
            _kill_group(p)
    server_mod._stop_all()


def _kill_group(p: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)


# ------------------------------------------------------------ one engine


def _engine_job(
    adapter: EngineAdapter, python: Path, model_path: Path, profile: HostProfile, tasks: _Tasks, greedy: dict
) -> Callable[[], list[EngineResult]]:
    def job() -> list[EngineResult]:
        return [_run_engine(adapter, python, model_path, profile, tasks, greedy)]

    return job


def _run_engine(
    adapter: EngineAdapter, python: Path, model_path: Path, profile: HostProfile, tasks: _Tasks, greedy: dict
) -> EngineResult:
    result = EngineResult(adapter.name, "pass", "", python=str(python))
    runnable, why = adapter.can_run(profile)
    if not runnable:
        result.status, result.reason = "skip", why
        return result
    exact = adapter.computes_float32(tasks.gpu)
    try:
        if not python.exists():
            raise EngineFailed(f"its python {python} does not exist")
        if not model_path.exists():
            raise EngineFailed(f"model {model_path} does not exist")
        # The in-process probe runs beside the server: both are bounded on their own.
        probe_box: dict = {}
        probe_thread = None
        if adapter.probe is not None:
            probe_thread = threading.Thread(
                target=_probe_into, args=(adapter, python, model_path, tasks, result, probe_box), daemon=True
            )
            probe_thread.start()
        serve_error: EngineFailed | None = None
        served_ids = None
        try:
            served_ids = _serve_and_ask(
                adapter, python, model_path, tasks.expected_text if exact else None, tasks, result
            )
        except EngineFailed as e:
            serve_error = e
        if probe_thread is not None:
            probe_thread.join()
            # The in-process load is the more basic failure: its reason (and log) wins.
            if "error" in probe_box:
                raise probe_box["error"]
        if serve_error is not None:
            raise serve_error
        if probe_thread is not None:
            if exact:
                probe = probe_box["probe"]
                greedy[adapter.name] = (probe["new_ids"], probe.get("prompt_logits"))
        elif exact and served_ids is not None:
            greedy[adapter.name] = (served_ids, None)
        result.reason = "served and answered" + (" the reference answer" if exact else "")
    except Cancelled:
        result.status, result.reason = "fail", "interrupted"
    except EngineFailed as e:
        result.status, result.reason, result.log_tail = "fail", str(e), e.log_tail or None
    except Exception as e:  # noqa: BLE001 - one engine's surprise must not stop the others' reports
        result.status, result.reason = "fail", f"unexpected {type(e).__name__}: {_one_line(e)}"
    return result


def _probe_into(
    adapter: EngineAdapter, python: Path, model_path: Path, tasks: _Tasks, result: EngineResult, box: dict
) -> None:
    try:
        box["probe"] = _probe(adapter, python, model_path, tasks, result)
    except BaseException as e:  # handed to the engine's thread, which reports it
        box["error"] = e


def _probe(
    adapter: EngineAdapter, python: Path, model_path: Path, tasks: _Tasks, result: EngineResult
) -> dict:
    argv = adapter.probe_command(python, model_path, tasks.prompt_ids, MAX_TOKENS, logits=True, gpu=tasks.gpu)
    assert argv is not None
    log_path = tasks.work_dir / f"{adapter.name}-probe.log"
    with tasks.lock:
        tasks.check()
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=offline_env(),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        tasks.probes.add(proc)
    try:
        stdout, stderr = proc.communicate(timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise EngineFailed(f"load+generate did not finish in {PROBE_TIMEOUT_S:.0f} s") from None
    finally:
        with tasks.lock:
            tasks.probes.discard(proc)
    tasks.check()
    log_path.write_text(redact(stdout + stderr))  # as every log we write
    tail = "\n".join(stderr.strip().splitlines()[-LOG_TAIL_LINES:])
    line = next((x for x in reversed(stdout.splitlines()) if x.startswith(RESULT_MARKER)), None)
    if proc.returncode != 0 or line is None:
        last = stderr.strip().splitlines()[-1:] or ["no output"]
        raise EngineFailed(f"load+generate failed (exit {proc.returncode}): {last[0][:300]}", tail)
    probe = json.loads(line[len(RESULT_MARKER) :])
    result.load_s = probe["load_s"]
    if probe["decode_s"] > 0:
        result.engine_tokens_per_s = (len(probe["new_ids"]) - 1) / probe["decode_s"]
    hw = probe.get("hardware", {})
    if adapter.model_format == "gguf":
        result.hardware = llama_cpp_placement(stderr)
    else:
        result.hardware = " ".join(str(hw[k]) for k in ("device", "name") if hw.get(k))
    return probe


def _serve_and_ask(
    adapter: EngineAdapter,
    python: Path,
    model_path: Path,
    expected_text: str | None,
    tasks: _Tasks,
    result: EngineResult,
) -> list[int] | None:
    """Serve, answer, stop; the server's own greedy ids where it can give them, else None."""
    import openai

    api_key = f"sk-smoke-{secrets.token_hex(8)}" if adapter.supports_api_key else None
    port = free_port(HOST)
    # The key goes the way serve's does: a 0600 file the launcher reads and deletes, never argv.
    argv = adapter.server_command(python, model_path, smoke_launch(adapter, HOST, port, tasks.gpu))
    env = {**adapter.server_env(tasks.work_dir / adapter.name), **smoke_env(adapter, tasks.gpu)}
    key_file = tasks.work_dir / adapter.name / "api-key"
    if api_key and adapter.api_key_flag:
        argv = keyed_command(argv, adapter.api_key_flag)
        env[KEY_FILE_ENV] = str(write_key_file(key_file, api_key))
    server = ManagedServer(
        argv,
        host=HOST,
        port=port,
        log_path=tasks.work_dir / f"{adapter.name}-server.log",
        api_key=api_key,
        env=env,
        ready_timeout_s=READY_TIMEOUT_S_BY_ENGINE.get(adapter.name, READY_TIMEOUT_S),
    )
    result.log_path = str(server.log_path)
    ids = None
    try:
        tasks.check()
        with server:
            tasks.check()
            result.ready_s = server.ready_s
            result.rss_mb = group_rss_mb(server.process.pid) if server.process else None
            client = openai.OpenAI(
                base_url=server.base_url, api_key=api_key or "none", timeout=REQUEST_TIMEOUT_S, max_retries=0
            )
            # transformers serve 5.17 lists only hub-cache models, not the local one it serves.
            served = server.models[0] if server.models else adapter.served_model(model_path)
            if served is None:
                raise AnswerError("GET /v1/models lists no model")
            ask(client, served, dict(adapter.extra_body), expected_text, result)
            ids_of = SERVER_GREEDY_IDS.get(adapter.name) if expected_text is not None else None
            if ids_of is not None:
                ids = ids_of(server.base_url, served, api_key, tasks.prompt_ids, MAX_TOKENS)
    except ServerError as e:
        tasks.check()
        raise EngineFailed(f"server: {e}", e.log_tail) from None
    except (openai.OpenAIError, AnswerError, OSError, KeyError, ValueError) as e:
        tasks.check()
        raise EngineFailed(f"chat: {_one_line(e)}", server.log_tail(LOG_TAIL_LINES)) from None
    finally:
        key_file.unlink(missing_ok=True)  # the launcher deletes it once read, unless it died first
    stopped = server.stop_result  # set by leaving the `with`
    if stopped is not None and not stopped.clean:
        code = stopped.returncode
        raise EngineFailed(
            f"server did not stop cleanly after SIGTERM (exit {code})", server.log_tail(LOG_TAIL_LINES)
        )
    if result.hardware is None:
        if adapter.model_format == "gguf":
            result.hardware = llama_cpp_placement(server.log_path.read_text(errors="replace"))
        else:
            result.hardware = "cuda" if tasks.gpu else "cpu"
    return ids


def ask(
    client,
    model_name: str,
    extra_body: dict,
    expected_text: str | None,
    result: EngineResult,
    cut_char_ok: bool = False,
) -> None:
    """One greedy chat completion and the same streamed, held to check_chat_answer."""
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
    check_chat_answer(
        text,
        "".join(parts),
        choice.finish_reason if choice else None,
        completion_tokens,
        MAX_TOKENS,
        expected_text,
        cut_char_ok,
    )


def group_rss_mb(pgid: int) -> float | None:
    """Resident memory of every process in a process group (a server and its workers), in MB."""
    total, page = 0, os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ... rss is 22nd
                total += int(fields[21]) * page
        except (OSError, ValueError, IndexError):
            continue
    return round(total / 1e6, 1) if total else None


# ------------------------------------------------------------ Xinference


def _xinference_job(python: Path, model: TinyModel, tasks: _Tasks) -> Callable[[], list[EngineResult]]:
    def job() -> list[EngineResult]:
        from smoke.xinference_check import run_xinference

        return run_xinference(python, model, tasks.work_dir, tasks.expected_text, tasks.check)

    return job


# ------------------------------------------------------------ agreement


def _agreements(
    greedy: dict[str, tuple[list[int], list | None]], expected, tolerance: float
) -> list[Agreement]:
    """Each exact engine against the numpy reference, and transformers against llama.cpp."""
    out = [
        compare_greedy(
            name,
            "reference",
            ids,
            expected.new_ids,
            logits,
            expected.prompt_logits if logits is not None else None,
            tolerance=tolerance,
        )
        for name, (ids, logits) in greedy.items()
    ]
    tf, lc = greedy.get("transformers"), greedy.get("llama-cpp-python")
    if tf and lc:
        out.append(
            compare_greedy(
                "transformers", "llama-cpp-python", tf[0], lc[0], tf[1], lc[1], tolerance=tolerance
            )
        )
    return out


def _model_info(model: TinyModel) -> dict:
    return {
        "key": model.key,
        "hf_dir": str(model.hf_dir),
        "gguf": str(model.gguf_path),
        "hf_bytes": model.hf_bytes,
        "gguf_bytes": model.gguf_bytes,
        "vocab_size": model.vocab_size,
        "generated": model.generated,
        "generate_s": round(model.generate_s, 3),
    }


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:400]
