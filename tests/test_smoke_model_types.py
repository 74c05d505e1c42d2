"""smoke for Xinference's embedding and rerank types: tiny models made in the Xinference env,
served by Xinference, answered through /v1/embeddings (openai client) and /v1/rerank, and
compared with the direct computation of their weights."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import cli

from provision.install.receipt import BackendRecord, EnvRecord, Receipt, write_receipt
from smoke.model_types import check_model_types, installed_types


def _receipt_with(root: Path, packages: list[str], status: str = "installed") -> None:
    prefix = root / "main"
    receipt = Receipt(
        profile={},
        plan={},
        installer="uv",
        environments=[EnvRecord("main", str(prefix), str(prefix / "bin" / "python"))],
        backends=[BackendRecord("xinference", status, "main", packages=packages)],
    )
    write_receipt(receipt, prefix)


def test_installed_types_come_from_the_receipts_xinference_extras(tmp_path):
    assert installed_types(tmp_path / "none") == ((), None)
    _receipt_with(tmp_path, ["xinference[transformers,rerank,embedding]==4.1.0"])
    assert installed_types(tmp_path) == (("embedding", "rerank"), tmp_path / "main" / "bin" / "python")
    _receipt_with(tmp_path, ["xinference[transformers]==4.1.0"])
    assert installed_types(tmp_path)[0] == ()
    _receipt_with(tmp_path, ["xinference[embedding]==4.1.0"], status="failed")
    assert installed_types(tmp_path) == ((), None)


def test_nothing_installed_nothing_checked(tmp_path):
    assert check_model_types(tmp_path / "python", (), tmp_path) == []


@pytest.fixture(scope="module")
def types_root(tmp_path_factory) -> Path:
    """Xinference with only the [embedding] and [rerank] extras (no LLM engines): the smallest
    install that serves both types. torch stays the local 2.13.0+cpu build (held by constraints)."""
    root = tmp_path_factory.mktemp("types") / "envs"
    done = cli("install", "--backend", "xinference", "--model-types", "embedding,rerank", "--venv", str(root))
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.mark.slow
def test_embedding_and_rerank_through_xinference(types_root, tmp_path):
    types, python = installed_types(types_root)
    assert types == ("embedding", "rerank")
    assert python is not None
    torch = cli("verify", "--venv", str(types_root), "--json")
    assert torch.returncode == 0, torch.stderr
    assert '"torch 2.13.0+cpu is cpu"' in torch.stdout
    rows = {r["backend"]: r for r in check_model_types(python, types, tmp_path)}
    for name in ("xinference-embedding", "xinference-rerank"):
        assert rows[name]["status"] == "pass", (rows[name]["reason"], rows[name].get("log_tail"))
    assert "/v1/embeddings" in rows["xinference-embedding"]["reason"]
    assert "sigmoid(logit)" in rows["xinference-rerank"]["reason"]
