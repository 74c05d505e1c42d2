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
from tests.support.cli import REPO, cli

FIX = Path(__file__).parent / "fixtures" / "models"
PROFILES = Path(__file__).parent / "profiles"


@pytest.fixture(scope="module")
def serve_root(request, tmp_path_factory) -> Path:
    python = os.environ.get("XINFER_TEST_ENGINE_PYTHON")
    if not python:
        return request.getfixturevalue("provisioned_root")
    root = tmp_path_factory.mktemp("serve-root")
    probe = (
        "import json, importlib.metadata as m\nout = {}\n"
        f"for b, d in {BACKEND_DISTS!r}.items():\n"
        "    try: out[b] = m.version(d)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True)
    found = json.loads(done.stdout)
    # Quick runs stand in for the provisioned root, which always has every CPU engine: one missing
    # is a wrong XINFER_TEST_ENGINE_PYTHON, said as such, not a test quietly skipped.
    missing = [b for b in ("transformers", "llama-cpp-python", "xllamacpp") if b not in found]
    if missing:
        pytest.fail(f"XINFER_TEST_ENGINE_PYTHON={python} lacks {', '.join(missing)}")
    backends = [BackendRecord(b, "installed", "main", v) for b, v in found.items()]
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
    _one_line_error(
        cli("serve", str(tmp_path), "--dry-run"), 2, "is not a model directory: it has no config.json"
    )


def test_profile_only_with_dry_run():
    _one_line_error(
        cli("serve", "tiny", "--profile", str(PROFILES / "macos-m1max.json")),
        2,
        "--profile describes another machine",
    )


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
    _one_line_error(
        cli("serve", "tiny", "--venv", str(serve_root), "--engine", "tensorrt", "--dry-run"),
        2,
        "unknown engine 'tensorrt'",
    )


def test_engine_that_cannot_run_here_is_exit_2_with_reason(serve_root):
    _one_line_error(
        cli("serve", "tiny", "--venv", str(serve_root), "--engine", "vllm", "--dry-run"),
        2,
        "vllm needs a CUDA device",
    )


def test_engine_not_installed_names_the_fix(tmp_path):
    # An empty environment root: a receipt with nothing installed.
    write_receipt(
        Receipt({}, {}, "uv", [EnvRecord("main", str(tmp_path / "main"), sys.executable)], []),
        tmp_path / "main",
    )
    _one_line_error(
        cli("serve", "tiny", "--venv", str(tmp_path), "--dry-run"),
        2,
        f"run `xinfer-setup install --backend transformers --venv {tmp_path}`",
    )
    _one_line_error(
        cli("serve", "tiny", "--venv", str(tmp_path), "--via", "xinference", "--dry-run"),
        2,
        "xinference is not installed here",
    )


def test_port_in_use_is_exit_2_and_starts_nothing(serve_root, state_home):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = cli(
            "serve", "tiny", "--venv", str(serve_root), "--port", str(port), env=state_home, timeout=120
        )
    _one_line_error(done, 2, f"cannot listen on 127.0.0.1:{port}")
    assert not _processes_mentioning(f"--port {port}")


def test_a_model_that_does_not_fit_is_exit_2_and_starts_nothing(serve_root, state_home):
    # Llama-3.1-70B (config and index only) on this machine's CPU: 131 GiB of bf16 weights.
    model = str(FIX / "hf" / "meta-llama--Llama-3.1-70B-Instruct")
    _one_line_error(
        cli("serve", model, "--venv", str(serve_root), env=state_home, timeout=120), 2, "does not fit"
    )
    assert not _processes_with_environ(state_home["XDG_STATE_HOME"])
    # --dry-run prints the decision with fits false and exits 0.
    done = cli("serve", model, "--venv", str(serve_root), "--dry-run", "--json", env=state_home)
    assert done.returncode == 0 and json.loads(done.stdout)["memory"]["fits"] is False


def test_bad_gpus_and_context_are_exit_2(serve_root):
    _one_line_error(
        cli("serve", "tiny", "--venv", str(serve_root), "--gpus", "0", "--dry-run"),
        2,
        "--gpus 0: no GPU 0 here (NVIDIA GPUs: none)",
    )
    too_long = cli("serve", "tiny", "--venv", str(serve_root), "--max-model-len", "999999", "--dry-run")
    _one_line_error(too_long, 2, "is above tiny's maximum context")
    _one_line_error(
        cli("serve", "tiny", "--venv", str(serve_root), "--gpus", "a,b", "--dry-run"),
        2,
        "comma-separated list",
    )


def test_dry_run_masks_the_api_key(serve_root):
    done = cli(
        "serve",
        "tiny",
        "--venv",
        str(serve_root),
        "--engine",
        "llama.cpp",
        "--api-key",
        "sk-dry-9x",
        "--dry-run",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert "sk-dry-9x" not in done.stdout + done.stderr
    assert json.loads(done.stdout)["command"][-2:] == ["--api-key", "***"]
    text = cli(
        "serve",
        "tiny",
        "--venv",
        str(serve_root),
        "--engine",
        "llama.cpp",
        "--api-key",
        "sk-dry-9x",
        "--dry-run",
    )
    assert "sk-dry-9x" not in text.stdout + text.stderr and "--api-key ***" in text.stdout


def test_dry_run_with_another_machines_profile():
    # An L40S on driver 580: plan --auto installs vLLM there (CUDA 13 wheel), so the tiny
    # llama (pytorch format, no quantization, a vLLM family) goes to vLLM.
    done = cli(
        "serve", "tiny", "--dry-run", "--json", "--profile", str(PROFILES / "linux-l40s-driver580.json")
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["engine"] in ("vllm", "sglang")
    # An RTX 3090 on driver 570: vllm 0.33.0 / sglang 0.5.23 need a CUDA 13 driver (>= 580), so
    # plan --auto skips them there and the model goes to transformers.
    done = cli(
        "serve", "tiny", "--dry-run", "--json", "--profile", str(PROFILES / "linux-rtx3090-driver570.json")
    )
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

    def __init__(self, args: list[str], env: dict[str, str], ready_timeout_s: float, wrap=lambda argv: argv):
        self.proc = subprocess.Popen(
            wrap([sys.executable, "-m", "provision", "serve", *args]),
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
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
    # Clients find the model's name by listing: it must be the name serve printed.
    assert [m.id for m in client.models.list()] == [model]
    messages = [{"role": "user", "content": "hello"}]
    plain = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    assert plain.choices[0].message.content
    assert plain.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0, stream=True
    )
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
    # Other sessions on this machine may run their own transformers serve: look for ours only,
    # by the environment serve gave it.
    assert not _processes_mentioning(str(port)) and not _processes_with_environ(state_home["XDG_STATE_HOME"])
    assert "k-123" not in err


def _argv_and_logs_hold_no(secret: str, serving: Serving, state_home: dict[str, str]) -> None:
    """The key is in no process's argv (what ps shows), in nothing serve printed, in no log."""
    assert not _processes_mentioning(secret)
    printed = "\n".join(f"{k}: {v}" for k, v in serving.info.items())
    assert secret not in printed
    for log in Path(state_home["XDG_STATE_HOME"]).rglob("*"):
        if log.is_file():
            assert secret.encode() not in log.read_bytes(), log


@pytest.mark.slow
def test_serve_tiny_by_hf_id_from_a_local_hub_cache(serve_root, state_home, tmp_path):
    from provision.engines.server import free_port
    from provision.tiny_model import ensure_tiny_model
    from tests.test_serve_sources import build_hub_cache

    tiny = ensure_tiny_model()
    files = {f.name: f for f in tiny.hf_dir.iterdir() if f.is_file()}
    build_hub_cache(tmp_path / "hub", "xinfer-setup/tiny-llama", files)
    secret = "sk-hf-cache-5a1t"
    # The key from the environment: not even serve's own argv holds it.
    env = {
        **state_home,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        "XINFER_SETUP_API_KEY": secret,
    }
    port = free_port()
    s = Serving(["xinfer-setup/tiny-llama", "--venv", str(serve_root), "--port", str(port)], env, 600)
    try:
        assert s.info["model"] == "xinfer-setup/tiny-llama"
        _chat_both_ways(s.info["url"], "xinfer-setup/tiny-llama", secret)
        _argv_and_logs_hold_no(secret, s, state_home)
    finally:
        code, err = s.stop()
    assert code == 0, err
    assert secret not in err and "engine: transformers" in err


@pytest.mark.slow
def test_serve_tiny_with_llama_cpp(serve_root, state_home):
    from provision.engines.server import free_port

    port = free_port()
    s = Serving(
        ["tiny", "--venv", str(serve_root), "--port", str(port), "--engine", "llama.cpp"],
        {**state_home, "XINFER_SETUP_API_KEY": "k-9-llama"},
        300,
    )
    try:
        assert s.info["model"] == "tiny"
        _chat_both_ways(s.info["url"], "tiny", "k-9-llama")
        # The key reached the engine through a 0600 file its launcher read and deleted.
        _argv_and_logs_hold_no("k-9-llama", s, state_home)
        assert not list(Path(state_home["XDG_STATE_HOME"]).rglob("api-key"))
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


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


@pytest.mark.slow
def test_64_concurrent_chats_through_the_key_guard(serve_root, state_home):
    """Every chat is answered or refused with a clean HTTP status, none is lost, and serve's
    threads come back to where they were."""
    from concurrent.futures import ThreadPoolExecutor

    import openai

    from provision.engines.server import free_port

    port = free_port()
    s = Serving(
        ["tiny", "--venv", str(serve_root), "--port", str(port), "--engine", "transformers"],
        {**state_home, "XINFER_SETUP_API_KEY": "k-load"},
        600,
    )
    try:
        url = s.info["url"]
        with openai.OpenAI(base_url=url, api_key="k-load", max_retries=0) as warm:
            warm.models.list()
        time.sleep(0.5)
        idle = _threads(s.proc.pid)

        def one(i: int) -> int | str:
            key = "wrong" if i % 8 == 7 else "k-load"
            # Closed after use: its kept-alive connection ends, and with it the guard's thread
            # (one left open would end after the guard's idle timeout).
            with openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=300) as client:
                try:
                    r = client.chat.completions.create(
                        model="tiny",
                        max_tokens=4,
                        temperature=0,
                        messages=[{"role": "user", "content": f"hello {i}"}],
                    )
                    return 200 if r.choices[0].message.content is not None else "empty"
                except openai.APIStatusError as e:
                    return e.status_code
                except openai.APIError as e:  # a reset or a timeout: a lost request
                    return f"lost: {type(e).__name__}"

        started = time.perf_counter()
        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(one, range(64)))
        took = time.perf_counter() - started
        assert len(results) == 64
        assert all(isinstance(r, int) for r in results), results
        assert results.count(401) == 8 and set(results) <= {200, 401, 503}, results
        assert results.count(200) >= 1
        deadline = time.monotonic() + 15
        while _threads(s.proc.pid) > idle and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _threads(s.proc.pid) <= idle, (idle, _threads(s.proc.pid))
    finally:
        code, err = s.stop()
    print(
        f"64 concurrent chats through the key guard: {took:.1f} s; {results.count(200)} answered, "
        f"{results.count(401)} refused 401, {results.count(503)} refused 503"
    )
    assert code == 0, err


CLIENT = """
import json, sys, openai
url, model = sys.argv[1], sys.argv[2]
with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300) as c:
    ids = [m.id for m in c.models.list()]
    r = c.chat.completions.create(model=model, max_tokens=8, temperature=0,
                                  messages=[{"role": "user", "content": "hello"}])
    print(json.dumps({"ids": ids, "content": r.choices[0].message.content}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["transformers", "llama.cpp"])
def test_via_xinference_in_its_virtualenvs_with_the_network_closed(serve_root, state_home, engine):
    """Xinference's per-model virtualenv mode on, in a network namespace with only loopback: the
    launch installs nothing from anywhere, and the model answers under its name."""
    from provision.engines.server import free_port
    from tests.support.netns import loopback_only_netns, netns_available

    why = netns_available()
    if why:
        pytest.skip(why)
    port = free_port()
    with loopback_only_netns("xserve") as ns:
        args = [
            "tiny",
            "--venv",
            str(serve_root),
            "--port",
            str(port),
            "--via",
            "xinference",
            "--engine",
            engine,
        ]
        s = Serving(args, state_home, 600, wrap=ns.wrap)
        try:
            assert s.info["model"] == "tiny"
            done = ns.run([sys.executable, "-c", CLIENT, s.info["url"], "tiny"], timeout=300)
            assert done.returncode == 0, done.stderr
            answer = json.loads(done.stdout)
            assert answer["ids"] == ["tiny"] and answer["content"]
        finally:
            code, err = s.stop()
    assert code == 0, err
    expected = "xllamacpp" if engine == "llama.cpp" else "transformers"
    assert f"engine: {expected} via Xinference" in err
    # Xinference made the model's virtualenv (and installed nothing into it: it is layered over
    # the provisioned environment).
    venvs = list(Path(state_home["XDG_STATE_HOME"]).rglob("virtualenv/v4/tiny/*/*/pyvenv.cfg"))
    assert venvs, err
    assert not _processes_with_environ(state_home["XDG_STATE_HOME"])
