"""Xinference itself, smoke-tested: the tiny model registered as a custom LLM, launched with its
transformers engine (the HF directory) and its llama.cpp engine (the GGUF, on xllamacpp),
each answered through Xinference's OpenAI endpoint with the openai client.

It reuses serve's launcher (provision/serve/xinference.py): xinference-local with auth off on
loopback, per-model virtualenvs off (the engines we provisioned, nothing from the network), a
fresh XINFERENCE_HOME in the run's scratch directory.

What is checked: the launch, a non-empty greedy answer, streamed == non-streamed, finish
reason and usage. The answer is not held to the float32 reference: Xinference runs the engines
with its own settings (its llama.cpp engine keeps llama.cpp's F16 KV cache; its transformers
engine decodes through its batching scheduler, and measured here its greedy answer to the
tiny model leaves the reference's after 8 tokens). Whether it matched is said in the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from provision.engines.server import ServerError, free_port
from provision.errors import OperationFailed
from provision.serve.choice import XINFERENCE_ENGINE_NAMES
from provision.serve.model_facts import inspect_model
from provision.serve.xinference import XinferenceApi, XinferenceServer, xinference_command, xinference_env
from provision.tiny_model import TinyModel
from smoke.report import EngineResult

HOST = "127.0.0.1"
READY_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 120.0
# xinference-local stops its supervisor and worker actor pools (and each model's subprocess) on
# SIGTERM; on a busy 2-core machine that took longer than the engines' 10 s.
STOP_GRACE_S = 60.0
# (our backend name for the engine, which file of the tiny model it loads)
ENGINES = (("transformers", "hf"), ("xllamacpp", "gguf"))


def row_name(engine: str) -> str:
    return f"xinference/{XINFERENCE_ENGINE_NAMES[engine]}"


def run_xinference(
    python: Path, model: TinyModel, work_dir: Path, expected_text: str, check_cancelled: Callable[[], None]
) -> list[EngineResult]:
    """One row per Xinference engine; a failed start fails both rows with the same reason."""
    import openai

    from smoke.checks import AnswerError
    from smoke.runner import ask, group_rss_mb

    rows = {engine: EngineResult(row_name(engine), "pass", "", python=str(python)) for engine, _ in ENGINES}
    home = work_dir / "xinference-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port(HOST)
    server = XinferenceServer(
        xinference_command(python, HOST, port),
        host=HOST,
        port=port,
        log_path=work_dir / "xinference-server.log",
        env=xinference_env(home, auth=False),
        ready_timeout_s=READY_TIMEOUT_S,
        grace_s=STOP_GRACE_S,
    )
    for r in rows.values():
        r.log_path = str(server.log_path)
    try:
        check_cancelled()
        with server:
            api = XinferenceApi(f"http://{HOST}:{port}")
            client = openai.OpenAI(
                base_url=server.base_url, api_key="none", timeout=REQUEST_TIMEOUT_S, max_retries=0
            )
            models = _private_copy(model, work_dir / "xinference-models")
            for engine, fmt in ENGINES:
                check_cancelled()
                row = rows[engine]
                path = models[fmt]
                try:
                    started = time.perf_counter()
                    name = f"xinfer-smoke-tiny-{fmt}"
                    uid = api.register_and_launch(inspect_model(path), name, engine, None)
                    row.ready_s = (server.ready_s or 0.0) + time.perf_counter() - started
                    row.rss_mb = group_rss_mb(server.process.pid) if server.process else None
                    ask(client, uid, {}, None, row, cut_char_ok=True)
                    row.hardware = "cpu"
                    same = "the reference answer" if row.answer == expected_text else "its own greedy answer"
                    row.reason = f"launched through Xinference and answered ({same})"
                except (OperationFailed, openai.OpenAIError, AnswerError) as e:
                    row.status, row.reason = "fail", " ".join(str(e).split())[:400]
                    row.log_tail = server.log_tail(15)
    except ServerError as e:
        for r in rows.values():
            r.status, r.reason, r.log_tail = "fail", f"xinference-local: {e}", e.log_tail
    stopped = server.stop_result
    if stopped is not None and not stopped.clean:
        for r in rows.values():
            if r.status == "pass":
                r.status = "fail"
                r.reason = f"xinference-local did not stop cleanly after SIGTERM (exit {stopped.returncode})"
    return list(rows.values())


def _private_copy(model: TinyModel, where: Path) -> dict[str, Path]:
    """The tiny model's files copied for Xinference to register (4 MB): it keeps a cache link to
    a registered model's directory, and the shared model cache must not depend on what it does."""
    import shutil

    hf = where / "hf"
    if not hf.exists():
        shutil.copytree(model.hf_dir, hf)
    gguf = where / "gguf" / model.gguf_path.name
    gguf.parent.mkdir(parents=True, exist_ok=True)
    if not gguf.exists():
        shutil.copyfile(model.gguf_path, gguf)
    return {"hf": hf, "gguf": gguf}
