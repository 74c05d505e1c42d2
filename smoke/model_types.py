"""smoke for Xinference's non-LLM model types: a tiny embedding model and a tiny rerank model,
made here, served by Xinference, answered through its API, checked against their own weights.

Runs when the receipt's xinference was installed with the [embedding] and/or [rerank] extras
(`install --model-types ...,embedding,rerank`). The models are written by the Xinference
environment's own libraries (smoke/tiny_encoders.py: seeded BERT weights, a local WordPiece
vocabulary; no hub) together with the numbers they must produce, computed from the saved
weights with transformers' BERT forward alone. Xinference must return the same:
- /v1/embeddings (the `openai` client), engine sentence_transformers: every vector within
  EMBEDDING_ATOL of the direct mean-pooled, L2-normalised one;
- /v1/rerank, engine sentence_transformers (a CrossEncoder): each document's relevance_score
  within RERANK_ATOL of sigmoid(logit), and the order by score the same.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from provision.engines.server import ServerError, free_port
from provision.errors import OperationFailed
from provision.install.receipt import read_receipt, receipt_path
from provision.serve.xinference import XinferenceApi, XinferenceServer, xinference_command, xinference_env

GENERATOR = Path(__file__).with_name("tiny_encoders.py")
CHECKED_TYPES = ("embedding", "rerank")
EMBEDDING_ATOL = 1e-4
RERANK_ATOL = 1e-4
READY_TIMEOUT_S = 300.0
TEXTS: dict[str, Any] = {
    "inputs": ["the cat sat on the river", "paris is the capital of france", "a dog and a bird"],
    "query": "what is the capital of france",
    "documents": ["paris is the capital of france", "the dog runs to the river", "a fish in water"],
}


def installed_types(venv_root: Path | None) -> tuple[tuple[str, ...], Path | None]:
    """(the checked types whose extras xinference was installed with, its python) from the receipt."""
    path = receipt_path(venv_root)
    if not path.exists():
        return (), None
    receipt = read_receipt(path)
    xinf = receipt.backend("xinference")
    env = receipt.environment(xinf.environment or "") if xinf else None
    if xinf is None or xinf.status != "installed" or env is None:
        return (), None
    extras: set[str] = set()
    for p in xinf.packages:
        try:
            extras |= Requirement(p).extras
        except InvalidRequirement:
            continue
    return tuple(t for t in CHECKED_TYPES if t in extras), Path(env.python)


def check_model_types(python: Path, types: tuple[str, ...], work_dir: Path) -> list[dict]:
    """One row per type: {"backend": "xinference-<type>", "status": pass|fail, "reason", ...}."""
    if not types:
        return []
    work_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {
        t: {"backend": f"xinference-{t}", "status": "fail", "reason": "not attempted"} for t in types
    }
    try:
        expected = _generate(python, work_dir / "tiny-encoders")
    except OperationFailed as e:
        for row in rows.values():
            row["reason"] = str(e)
        return list(rows.values())
    home = work_dir / "xinference-home"
    shutil.rmtree(home, ignore_errors=True)
    port = free_port()
    server = XinferenceServer(
        xinference_command(python, "127.0.0.1", port),
        host="127.0.0.1",
        port=port,
        log_path=work_dir / "xinference-model-types.log",
        env=xinference_env(home, auth=False),
        ready_timeout_s=READY_TIMEOUT_S,
    )
    try:
        server.start()
    except ServerError as e:
        for row in rows.values():
            row.update(
                reason=f"xinference-local did not start: {e}",
                log_tail=e.log_tail,
                log_path=str(server.log_path),
            )
        return list(rows.values())
    try:
        api = XinferenceApi(f"http://127.0.0.1:{port}")
        for t in types:
            started = time.perf_counter()
            try:
                check = _check_embedding if t == "embedding" else _check_rerank
                rows[t]["reason"] = check(api, server.base_url, expected)
                rows[t]["status"] = "pass"
            except (OperationFailed, AssertionError, KeyError, ValueError) as e:
                rows[t].update(reason=str(e)[:600], log_tail=server.log_tail(), log_path=str(server.log_path))
            rows[t]["ready_s"] = round(time.perf_counter() - started, 2)
    finally:
        server.stop()
    return list(rows.values())


def _generate(python: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    try:
        done = subprocess.run(
            [str(python), str(GENERATOR), str(out), json.dumps(TEXTS)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OperationFailed(f"cannot make the tiny embedding/rerank models: {e}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise OperationFailed(f"cannot make the tiny embedding/rerank models: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _register_and_launch(api: XinferenceApi, model_type: str, family: dict) -> str:
    name = family["model_name"]
    api.call("POST", f"/v1/model_registrations/{model_type}", {"model": json.dumps(family), "persist": False})
    launched = api.call(
        "POST",
        "/v1/models",
        {
            "model_uid": name,
            "model_name": name,
            "model_type": model_type,
            "model_engine": "sentence_transformers",
        },
        timeout=READY_TIMEOUT_S,
    )
    return launched["model_uid"]


def _spec(path: str) -> dict:
    return {"model_format": "pytorch", "model_id": None, "model_uri": path, "quantization": "none"}


def _check_embedding(api: XinferenceApi, base_url: str, expected: dict) -> str:
    from openai import OpenAI

    uid = _register_and_launch(
        api,
        "embedding",
        {
            "version": 2,
            "model_name": "xinfer-setup-tiny-embedding",
            "dimensions": expected["dimensions"],
            "max_tokens": 64,
            "language": ["en"],
            "model_specs": [_spec(expected["embedding_dir"])],
        },
    )
    client = OpenAI(base_url=base_url, api_key="not-used", max_retries=0, timeout=120)
    got = client.embeddings.create(model=uid, input=list(TEXTS["inputs"]))
    vectors = [d.embedding for d in sorted(got.data, key=lambda d: d.index)]
    want = expected["embeddings"]
    assert len(vectors) == len(want), f"{len(vectors)} vectors for {len(want)} inputs"
    worst = max(abs(a - b) for v, w in zip(vectors, want, strict=True) for a, b in zip(v, w, strict=True))
    assert all(len(v) == expected["dimensions"] for v in vectors), "wrong dimensions"
    assert worst <= EMBEDDING_ATOL, f"/v1/embeddings differs from the direct computation by {worst:.2e}"
    return (
        f"/v1/embeddings ({len(vectors)}x{expected['dimensions']}) equals the direct computation "
        f"(max |diff| {worst:.1e} <= {EMBEDDING_ATOL:g})"
    )


def _check_rerank(api: XinferenceApi, base_url: str, expected: dict) -> str:
    uid = _register_and_launch(
        api,
        "rerank",
        {
            "version": 2,
            "model_name": "xinfer-setup-tiny-rerank",
            "language": ["en"],
            "type": "normal",
            "max_tokens": 64,
            "model_specs": [_spec(expected["rerank_dir"])],
        },
    )
    answer = api.call(
        "POST",
        "/v1/rerank",
        {
            "model": uid,
            "query": TEXTS["query"],
            "documents": TEXTS["documents"],
            "return_documents": False,
        },
    )
    results = answer["results"]
    got = {r["index"]: r["relevance_score"] for r in results}
    want = expected["rerank_scores"]
    assert sorted(got) == list(range(len(want))), f"rerank answered indexes {sorted(got)}"
    worst = max(abs(got[i] - w) for i, w in enumerate(want))
    assert worst <= RERANK_ATOL, f"/v1/rerank scores differ from sigmoid(logit) by {worst:.2e}"
    # Ranked best first; documents whose scores tie within the tolerance may come in either order.
    ranked = [got[r["index"]] for r in results]
    in_order = all(a >= b - RERANK_ATOL for a, b in zip(ranked, ranked[1:], strict=False))
    assert in_order, f"rerank order {ranked}"
    return f"/v1/rerank scores equal sigmoid(logit) of the direct computation (max |diff| {worst:.1e})"


def installed_type_results(venv_root: Path | None, work_dir: Path) -> list:
    """smoke's rows (EngineResult) for the model types installed under venv_root; [] when none are."""
    from smoke.runner import EngineResult

    types, python = installed_types(venv_root)
    if python is None or not types:
        return []
    return [EngineResult(**row) for row in check_model_types(python, types, work_dir / "model-types")]
