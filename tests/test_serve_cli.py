"""`xinfer-setup serve` for real: the CLI in a subprocess, real engines, the openai client.

Engines come from the session's real `install --auto` (conftest's provisioned_root), or,
for quick runs, from XINFER_TEST_ENGINE_PYTHON (one python with xinference + transformers,
and xllamacpp if it has it), recorded in a receipt the way install writes one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provision.install.receipt import BACKEND_DISTS, BackendRecord, EnvRecord, Receipt, write_receipt
from tests.conftest import REPO, cli

FIX = Path(__file__).parent / "fixtures" / "models"


@pytest.fixture(scope="module")
def serve_root(request, tmp_path_factory) -> Path:
    python = os.environ.get("XINFER_TEST_ENGINE_PYTHON")
    if not python:
        return request.getfixturevalue("provisioned_root")
    root = tmp_path_factory.mktemp("serve-root")
    probe = ("import json, importlib.metadata as m\nout = {}\n"
             f"for b, d in {BACKEND_DISTS!r}.items():\n"
             "    try: out[b] = m.version(d)\n"
             "    except m.PackageNotFoundError: pass\n"
             "print(json.dumps(out))")
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True)
    backends = [BackendRecord(b, "installed", "main", v) for b, v in json.loads(done.stdout).items()]
    prefix = str(Path(python).parent.parent)
    write_receipt(Receipt({}, {}, "uv", [EnvRecord("main", prefix, python)], backends), root / "main")
    return root


@pytest.fixture
def state_home(tmp_path) -> dict[str, str]:
    return {"XDG_STATE_HOME": str(tmp_path / "state")}


def _one_line_error(done: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- bad input, no engines needed


def test_missing_model_is_one_line_exit_2(tmp_path):
    _one_line_error(cli("serve", str(tmp_path / "nope"), "--dry-run"), 2, "no such model")


def test_directory_that_is_not_a_model_is_exit_2(tmp_path):
    _one_line_error(cli("serve", str(tmp_path), "--dry-run"), 2,
                    "is not a model directory: it has no config.json")


def test_profile_only_with_dry_run():
    _one_line_error(cli("serve", "tiny", "--profile", str(FIX / "profiles" / "macos-m1max.json")), 2,
                    "--profile describes another machine")


def test_unknown_via_is_a_usage_error():
    _one_line_error(cli("serve", "tiny", "--via", "ollama"), 2, "ollama")


# ---------------------------------------------------------------- decisions on this machine


def test_dry_run_json_decides_without_starting_anything(serve_root):
    done = cli("serve", "tiny", "--venv", str(serve_root), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    decision = json.loads(done.stdout)
    assert decision["engine"] == "transformers"  # no CUDA here: vLLM and SGLang are ruled out
    assert "vllm needs a CUDA device" in decision["reason"]
    assert decision["command"][0].endswith("python") and "serve" in decision["command"]
    assert decision["family"] == "llama-2" and decision["format"] == "pytorch"


def test_unknown_engine_is_exit_2(serve_root):
    _one_line_error(cli("serve", "tiny", "--venv", str(serve_root), "--engine", "tensorrt", "--dry-run"), 2,
                    "unknown engine 'tensorrt'")


def test_engine_that_cannot_run_here_is_exit_2_with_reason(serve_root):
    _one_line_error(cli("serve", "tiny", "--venv", str(serve_root), "--engine", "vllm", "--dry-run"), 2,
                    "vllm needs a CUDA device")


def test_engine_not_installed_names_the_fix(tmp_path):
    # An empty environment root: a receipt with nothing installed.
    write_receipt(Receipt({}, {}, "uv", [EnvRecord("main", str(tmp_path / "main"), sys.executable)], []),
                  tmp_path / "main")
    _one_line_error(cli("serve", "tiny", "--venv", str(tmp_path), "--dry-run"), 2,
                    f"run `xinfer-setup install --backend transformers --venv {tmp_path}`")
    _one_line_error(cli("serve", "tiny", "--venv", str(tmp_path), "--via", "xinference", "--dry-run"), 2,
                    "xinference is not installed here")


def test_port_in_use_is_exit_2_and_starts_nothing(serve_root, state_home):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = cli("serve", "tiny", "--venv", str(serve_root), "--port", str(port), env=state_home,
                   timeout=120)
    _one_line_error(done, 2, f"cannot listen on 127.0.0.1:{port}")
    assert not _processes_mentioning(f"--port {port}")


def test_dry_run_with_another_machines_profile():
    import provision.planner

    if not hasattr(provision.planner, "make_plan"):
        pytest.skip("provision.planner.make_plan has not landed yet")
    # An L40S on driver 580: plan --auto installs vLLM there (CUDA 13 wheel), so the tiny
    # llama (pytorch format, no quantization, a vLLM family) goes to vLLM.
    done = cli("serve", "tiny", "--dry-run", "--json", "--profile",
               str(Path(__file__).parent / "profiles" / "linux-l40s-driver580.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["engine"] in ("vllm", "sglang")
    # An RTX 3090 on driver 570: vllm 0.33.0 / sglang 0.5.23 need a CUDA 13 driver (>= 580), so
    # plan --auto skips them there and the model goes to transformers.
    done = cli("serve", "tiny", "--dry-run", "--json", "--profile",
               str(FIX / "profiles" / "linux-rtx3090-driver570.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["engine"] == "transformers"


# ---------------------------------------------------------------- serving for real


def _processes_mentioning(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(") ")[-1][:1]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(cmdline)
    return found


def _processes_with_environ(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                state = (entry / "stat").read_text().split(") ")[-1][:1]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


class Serving:
    """`xinfer-setup serve` in the foreground of a child process, read until it prints its endpoint."""

    def __init__(self, args: list[str], env: dict[str, str], ready_timeout_s: float):
        self.proc = subprocess.Popen([sys.executable, "-m", "provision", "serve", *args], cwd=REPO,
                                     env={**os.environ, **env}, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.started = time.perf_counter()
        self.info: dict[str, str] = {}
        deadline = self.started + ready_timeout_s
        while "model" not in self.info:
            line = self.proc.stdout.readline()
            if not line:
                self.stop()
                err = self.proc.stderr.read()
                pytest.fail(f"serve exited {self.proc.returncode} before it was ready:\n{err}")
            key, _, value = line.strip().partition(": ")
            self.info[{"OpenAI base URL": "url"}.get(key, key)] = value
            if time.perf_counter() > deadline:
                self.stop()
                pytest.fail("serve not ready in time")
        self.ready_s = time.perf_counter() - self.started

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            _, err = self.proc.communicate()
            pytest.fail("serve did not stop on SIGTERM")
        return self.proc.returncode, err


def _chat_both_ways(url: str, model: str, api_key: str) -> None:
    import openai

    client = openai.OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "hello"}]
    plain = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    assert plain.choices[0].message.content
    assert plain.usage.completion_tokens > 0
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0,
                                            stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(pieces) > 1 and "".join(pieces)


@pytest.mark.slow
def test_serve_tiny_engine_native_with_api_key(serve_root, state_home):
    import openai

    from provision.engines.server import free_port

    port = free_port()
    args = ["tiny", "--venv", str(serve_root), "--port", str(port), "--api-key", "k-123"]
    s = Serving(args, state_home, 600)
    try:
        assert s.info["url"] == f"http://127.0.0.1:{port}/v1"
        _chat_both_ways(s.info["url"], s.info["model"], "k-123")
        for wrong in ("k-12", "nope"):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=s.info["url"], api_key=wrong, max_retries=0).models.list()
    finally:
        code, err = s.stop()
    print(f"engine-native transformers: start to ready {s.ready_s:.1f} s")
    assert code == 0 and "stopped" in err, err
    assert not _processes_mentioning(str(port)) and not _processes_mentioning("transformers.cli")


@pytest.mark.slow
def test_serve_tiny_with_llama_cpp(serve_root, state_home):
    from provision.engines.server import free_port
    from provision.install.receipt import installed_backends

    if "xllamacpp" not in installed_backends(serve_root):
        pytest.skip("XINFER_TEST_ENGINE_PYTHON has no xllamacpp")  # the provisioned root always has it
    port = free_port()
    s = Serving(["tiny", "--venv", str(serve_root), "--port", str(port), "--engine", "llama.cpp",
                 "--api-key", "k-9"], state_home, 300)
    try:
        assert s.info["model"] == "tiny"
        _chat_both_ways(s.info["url"], "tiny", "k-9")
    finally:
        code, err = s.stop()
    print(f"engine-native xllamacpp: start to ready {s.ready_s:.1f} s")
    assert code == 0, err
    assert not _processes_mentioning(f"--port {port}")


@pytest.mark.slow
def test_serve_tiny_via_xinference(serve_root, state_home):
    from provision.engines.server import free_port

    port = free_port()
    args = ["tiny", "--venv", str(serve_root), "--port", str(port), "--via", "xinference"]
    s = Serving(args, state_home, 600)
    try:
        assert s.info["model"] == "tiny"
        _chat_both_ways(s.info["url"], "tiny", "unused")
    finally:
        code, err = s.stop()
    print(f"via xinference (transformers): start to ready {s.ready_s:.1f} s")
    assert code == 0, err
    assert "engine: transformers via Xinference" in err
    assert not _processes_mentioning(f"-p {port}")
    # Xinference's model workers are forked children: find them by the environment serve gave them.
    assert not _processes_with_environ(state_home["XDG_STATE_HOME"])
