"""Model sources through the real CLI: Hugging Face ids from a hub cache built on disk in
huggingface_hub's own layout (offline), from a stand-in hub on 127.0.0.1 (the real one is not
reachable here; the stand-in speaks the resolve/ protocol huggingface_hub uses), and the
errors of each. Decisions use --profile, so no engine needs to be installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.cli import cli

FIX = Path(__file__).parent / "fixtures" / "models"
H100 = str(Path(__file__).parent / "profiles" / "linux-h100-driver590.json")
LLAMA3_8B = FIX / "hf" / "meta-llama--Meta-Llama-3-8B-Instruct"
COMMIT = "a8977699a3d0820e80129fb3c93c20fbd9972c41"


def build_hub_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT) -> Path:
    """A repository in huggingface_hub's cache layout: blobs named by content hash, the snapshot
    of `commit` linking to them, refs/main naming the commit. Returns the snapshot directory."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def _one_line_error(done, code: int, text: str) -> None:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def _dry(model: str, env: dict[str, str], *extra: str):
    return cli("serve", model, "--dry-run", "--json", "--profile", H100, *extra, env=env, timeout=120)


@pytest.fixture
def hub_env(tmp_path) -> dict[str, str]:
    return {
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def test_hf_id_from_the_cache_offline(hub_env, tmp_path):
    files = {
        "config.json": LLAMA3_8B / "config.json",
        "model.safetensors.index.json": LLAMA3_8B / "model.safetensors.index.json",
    }
    snapshot = build_hub_cache(tmp_path / "hub", "meta-llama/Meta-Llama-3-8B-Instruct", files)
    done = _dry("meta-llama/Meta-Llama-3-8B-Instruct", {**hub_env, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert d["source"] == "hf-cache" and d["served_name"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert d["model"] == str(snapshot.resolve()) or d["model"] == str(snapshot)
    assert d["engine"] == "vllm" and d["family"] == "llama-3"
    assert d["memory"]["weights_gib"] == round(16060522496 / 2**30, 2)
    assert d["memory"]["context_length"] == 8192 and d["memory"]["fits"] is True
    cmd = d["command"]
    assert cmd[cmd.index("--served-model-name") + 1] == "meta-llama/Meta-Llama-3-8B-Instruct"


def test_hf_id_not_cached_and_offline_is_one_line(hub_env):
    _one_line_error(
        _dry("meta-llama/Meta-Llama-3-8B-Instruct", {**hub_env, "HF_HUB_OFFLINE": "1"}),
        2,
        "is not in the Hugging Face cache",
    )


def test_hub_unreachable_with_no_cache_is_one_line_and_leaves_nothing(hub_env, tmp_path):
    from provision.engines.server import free_port

    env = {**hub_env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    _one_line_error(_dry("meta-llama/Meta-Llama-3-8B-Instruct", env), 2, "cannot be reached")
    assert not list((tmp_path / "hub").rglob("*.incomplete"))


class FakeHub:
    """Serves one repository's files the way huggingface.co's resolve/ endpoint does (HEAD with
    X-Repo-Commit/ETag, then GET); any other repository is 404 RepoNotFound. Records requests."""

    def __init__(self, repo_id: str, files: dict[str, Path]):
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                prefix = f"/{repo_id}/resolve/"
                if not self.path.startswith(prefix):
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                name = self.path[len(prefix) :].split("/", 1)[1].split("?")[0]
                if name not in files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = files[name].read_bytes()
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self):
                self._answer(False)

            def do_GET(self):
                self._answer(True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub():
    hub = FakeHub(
        "meta-llama/Meta-Llama-3-8B-Instruct",
        {
            "config.json": LLAMA3_8B / "config.json",
            "model.safetensors.index.json": LLAMA3_8B / "model.safetensors.index.json",
        },
    )
    yield hub
    hub.close()


def test_hf_id_from_the_hub_fetches_only_config_and_index(hub_env, fake_hub):
    done = _dry("meta-llama/Meta-Llama-3-8B-Instruct", {**hub_env, "HF_ENDPOINT": fake_hub.url})
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert d["source"] == "hub" and d["model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert d["memory"]["weights_gib"] == round(16060522496 / 2**30, 2)
    fetched = {r.split("/")[-1] for r in fake_hub.requests}
    assert fetched == {"config.json", "model.safetensors.index.json"}, fake_hub.requests
    # The next run finds them in the cache.
    again = _dry("meta-llama/Meta-Llama-3-8B-Instruct", {**hub_env, "HF_HUB_OFFLINE": "1"})
    assert json.loads(again.stdout)["source"] == "hf-cache"


def test_unknown_hf_id_is_one_line(hub_env, fake_hub, tmp_path):
    _one_line_error(
        _dry("nobody/no-such-model", {**hub_env, "HF_ENDPOINT": fake_hub.url}),
        2,
        "no model nobody/no-such-model on the Hugging Face hub",
    )
    assert not list((tmp_path / "hub").rglob("*.incomplete"))


def test_source_options_that_do_not_apply_are_refused():
    _one_line_error(
        cli("serve", str(LLAMA3_8B), "--dry-run", "--size", "8"),
        2,
        "--size applies to Xinference built-in names",
    )
    _one_line_error(cli("serve", "./nope/model.gguf", "--dry-run"), 2, "no such model")


def test_local_dir_with_config_and_index_is_enough_for_dry_run(tmp_path):
    model = tmp_path / "Llama-3-8B-Instruct"
    shutil.copytree(LLAMA3_8B, model)
    done = cli("serve", str(model), "--dry-run", "--json", "--profile", H100)
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert d["source"] == "local" and d["served_name"] == "Llama-3-8B-Instruct"
    assert set(d["memory"]) == {
        "weights_gib",
        "kv_cache_gib",
        "need_gib",
        "have_gib",
        "devices",
        "context_length",
        "fits",
        "tensor_parallel",
        "kv_rule",
    }
    assert d["memory"]["kv_rule"].startswith("every layer keeps K and V of every token")
    for key in (
        "engine",
        "reason",
        "command",
        "model",
        "format",
        "quantization",
        "family",
        "host",
        "port",
        "via",
    ):
        assert key in d
