"""ManagedServer against real processes: a small real HTTP server written to tmp_path."""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from provision.engines.server import ManagedServer, ServerError, free_port, parse_models, tail_lines

# A real OpenAI-ish /v1/models server whose misbehaviour is chosen by argv[2].
FAKE_SERVER = textwrap.dedent(
    """
    import http.server, json, os, signal, subprocess, sys, time
    port, mode = int(sys.argv[1]), sys.argv[2]
    print("fake server starting in mode", mode, flush=True)
    if mode == "die":
        print("fatal: cannot load model weights", flush=True)
        sys.exit(3)
    if mode == "never":
        time.sleep(600)
    if mode == "log-key":
        # As vLLM logs its arguments, the key among them, here in two writes a moment apart.
        key = os.environ["FAKE_SERVER_KEY"]
        sys.stdout.write("non-default args: {'api_key': ['" + key[:7])
        sys.stdout.flush()
        time.sleep(0.3)
        sys.stdout.write(key[7:] + "'], 'port': " + str(port) + "}\\nno newline at the end " + key)
        sys.stdout.flush()
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "exit143":
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
    if mode == "child":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open(sys.argv[3], "w").write(str(child.pid))
    time.sleep(0.5)  # a server is never ready at once

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            # The key it demands comes from the test (FAKE_SERVER_KEY); a missing header is refused too.
            required = os.environ.get("FAKE_SERVER_KEY")
            if required and self.headers.get("Authorization") != "Bearer " + required:
                self.send_response(401); self.end_headers(); return
            body = b"<html>not json</html>" if mode == "garbage" else json.dumps(
                {"object": "list", "data": [{"id": "tiny", "object": "model"}]}).encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a):
            pass

    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
    """
)


@pytest.fixture
def fake(tmp_path: Path):
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    servers: list[ManagedServer] = []

    def make(mode: str, *extra: str, ready_timeout_s: float = 30, grace_s: float = 5, api_key=None):
        port = free_port()
        server = ManagedServer(
            [sys.executable, str(script), str(port), mode, *extra],
            host="127.0.0.1",
            port=port,
            log_path=tmp_path / f"{mode}.log",
            ready_timeout_s=ready_timeout_s,
            grace_s=grace_s,
            api_key=api_key,
        )
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _port_is_free(port: int) -> bool:
    # SO_REUSEADDR as every server sets it: TIME_WAIT leftovers of closed connections do not count.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


def test_free_port_is_bindable():
    port = free_port()
    assert 1024 <= port <= 65535
    assert _port_is_free(port)


def test_ready_then_clean_stop_releases_port(fake):
    server = fake("ok")
    with server:
        assert server.ready_s is not None and server.ready_s > 0
        assert server.models == ["tiny"]
        assert server.process.poll() is None
        pid, port = server.process.pid, server.port
    assert server.stop_result.clean and not server.stop_result.killed
    assert server.stop_result.returncode == -signal.SIGTERM
    assert not _alive(pid)
    assert _port_is_free(port)


def test_env_is_offline(fake):
    server = fake("ok")
    assert server.env["HF_HUB_OFFLINE"] == "1"
    assert server.env["TRANSFORMERS_OFFLINE"] == "1"


def test_exit_143_after_sigterm_is_clean(fake):
    server = fake("exit143")
    server.start()
    result = server.stop()
    assert result.returncode == 143
    assert result.clean


def test_api_key_is_sent(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SERVER_KEY", "sk-test")
    server = fake("ok", api_key="sk-test")
    with server:
        assert server.models == ["tiny"]


def test_a_server_that_demands_a_key_refuses_a_client_without_one(fake, monkeypatch):
    """The check above can fail: without the key the fake server answers 401."""
    monkeypatch.setenv("FAKE_SERVER_KEY", "sk-test")
    server = fake("ok")
    with pytest.raises(ServerError, match="HTTP 401"):
        server.start()


def test_wrong_api_key_fails_fast(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SERVER_KEY", "sk-test")
    server = fake("ok", api_key="sk-wrong")
    with pytest.raises(ServerError, match="HTTP 401"):
        server.start()
    assert server.process.poll() is not None


def test_the_log_never_holds_the_servers_key_even_written_in_two_halves(fake, monkeypatch):
    key = "sk-smoke-0123456789abcdef"
    monkeypatch.setenv("FAKE_SERVER_KEY", key)
    server = fake("log-key", api_key=key)
    with server:
        assert server.models == ["tiny"]
    log = server.log_path.read_text()
    assert "non-default args: {'api_key': ['****'], 'port'" in log  # the line is there, masked
    assert "no newline at the end ****" in log  # a last line with no newline is kept, masked
    for piece in (key, key[:7], key[7:]):
        assert piece not in log, log


def test_the_log_keeps_bytes_that_are_not_utf8(fake, tmp_path):
    script = tmp_path / "bytes.py"
    script.write_text("import sys; sys.stdout.buffer.write(b'caf\\xe9 \\xff\\n'); sys.exit(5)")
    port = free_port()
    server = ManagedServer(
        [sys.executable, str(script)], host="127.0.0.1", port=port, log_path=tmp_path / "b.log"
    )
    with pytest.raises(ServerError, match="exited with code 5"):
        server.start()
    assert server.log_path.read_bytes() == b"caf\xe9 \xff\n"


def test_server_that_dies_fails_with_its_log(fake):
    server = fake("die")
    with pytest.raises(ServerError, match="exited with code 3") as e:
        server.start()
    assert "cannot load model weights" in e.value.log_tail


def test_server_never_ready_times_out_and_is_killed(fake):
    server = fake("never", ready_timeout_s=2)
    with pytest.raises(ServerError, match="not ready after 2 s") as e:
        server.start()
    assert "mode never" in e.value.log_tail
    assert not _alive(server.process.pid)


def test_garbage_answer_fails(fake):
    server = fake("garbage")
    with pytest.raises(ServerError, match="garbage"):
        server.start()
    assert not _alive(server.process.pid)


def test_sigterm_ignored_gets_sigkill(fake):
    server = fake("ignore-term", grace_s=1)
    server.start()
    result = server.stop()
    assert result.killed and not result.clean
    assert result.returncode == -signal.SIGKILL


def test_grandchildren_are_killed_with_the_group(fake, tmp_path):
    pid_file = tmp_path / "child.pid"
    server = fake("child", str(pid_file))
    with server:
        child = int(pid_file.read_text())
        assert _alive(child)
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_exception_inside_context_still_stops(fake):
    server = fake("ok")
    with pytest.raises(KeyboardInterrupt), server:
        raise KeyboardInterrupt
    assert server.stop_result is not None
    assert not _alive(server.process.pid)


def test_stop_is_idempotent(fake):
    server = fake("ok")
    server.start()
    first = server.stop()
    assert server.stop() is first


def test_parse_models_recorded_bodies():
    # Real bodies: llama_cpp.server 0.3.x and vLLM both answer this shape.
    body = b'{"object":"list","data":[{"id":"tiny","object":"model","owned_by":"me","permissions":[]}]}'
    assert parse_models(body) == ["tiny"]
    with pytest.raises(ServerError, match="garbage"):
        parse_models(b'{"detail":"Not Found"}')


def test_tail_lines(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    assert tail_lines(log, 3) == "line 47\nline 48\nline 49"
    assert tail_lines(tmp_path / "missing.log") == ""
