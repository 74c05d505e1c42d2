"""The proxy in front of `transformers serve`, against a real HTTP upstream on 127.0.0.1 that
answers like it (a JSON chat completion after a delay), over real sockets: names, keys,
bounds, and threads that end with their connections."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from provision.serve import keyguard
from provision.serve.keyguard import KeyGuard

UPSTREAM_NAME = "/home/u/.cache/models/tiny/hf"


class Upstream:
    """Echoes the model it was asked for after `delay_s`; lists no models, as transformers serve
    5.17 does when the model is not in its hub cache."""

    def __init__(self, delay_s: float = 0.0):
        self.seen: list[str] = []
        up = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                self._send({"object": "list", "data": []})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                up.seen.append(body.get("model"))
                time.sleep(delay_s)
                self._send(
                    {
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
                    }
                )

            def _send(self, obj):
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def guard():
    made = []

    def make(key: str | None = "k1", delay_s: float = 0.0, limit: int = 64) -> KeyGuard:
        up = Upstream(delay_s)
        g = KeyGuard("127.0.0.1", 0, "127.0.0.1", up.port, key, "tiny", UPSTREAM_NAME, limit=limit)
        g.start()
        g.upstream = up  # type: ignore[attr-defined]
        made.append((g, up))
        return g

    yield make
    for g, up in made:
        g.stop()
        up.close()


def call(
    g: KeyGuard,
    method: str,
    path: str,
    body: bytes | None = None,
    key: str | None = "k1",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", g.server.server_address[1], timeout=30)
    h = {"Content-Type": "application/json", **(headers or {})}
    if key:
        h["Authorization"] = f"Bearer {key}"
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw else {}
    finally:
        conn.close()


def chat(model: str = "tiny") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}]}).encode()


def test_lists_and_answers_under_the_served_name(guard):
    g = guard()
    assert call(g, "GET", "/v1/models") == (200, keyguard.models_listing("tiny"))
    assert call(g, "GET", "/v1/models/tiny")[1]["id"] == "tiny"
    assert call(g, "GET", "/v1/models/other")[0] == 404
    status, body = call(g, "POST", "/v1/chat/completions", chat())
    assert status == 200 and g.upstream.seen == [UPSTREAM_NAME]
    # Any other model is refused here, not fetched by transformers from the hub.
    status, body = call(g, "POST", "/v1/chat/completions", chat("Qwen/Qwen2.5-72B"))
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert g.upstream.seen == [UPSTREAM_NAME]


def test_without_a_key_only_names_are_rewritten(guard):
    g = guard(key=None)
    assert call(g, "POST", "/v1/chat/completions", chat(), key=None)[0] == 200


def test_refuses_wrong_keys_big_bodies_and_unsized_bodies(guard):
    g = guard()
    assert call(g, "GET", "/v1/models", key=None)[0] == 401
    assert call(g, "POST", "/v1/chat/completions", chat(), key="k2")[1]["error"]["code"] == "invalid_api_key"
    # Refused on its Content-Length, before a byte of the body is read.
    conn = http.client.HTTPConnection("127.0.0.1", g.server.server_address[1], timeout=10)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Length", str(keyguard.MAX_BODY + 1))
    conn.putheader("Authorization", "Bearer k1")
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", g.server.server_address[1], timeout=10)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.putheader("Authorization", "Bearer k1")
    conn.endheaders()
    conn.send(b"0\r\n\r\n")
    assert conn.getresponse().status == 411
    conn.close()
    assert g.upstream.seen == []


def test_a_silent_client_is_dropped(guard, monkeypatch):
    monkeypatch.setattr(keyguard, "CLIENT_TIMEOUT_S", 0.5)
    g = guard()
    import socket

    s = socket.create_connection(("127.0.0.1", g.server.server_address[1]))
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100\r\nAuthorization: Bearer k1\r\n\r\n"
    )
    s.settimeout(10)
    started = time.monotonic()
    reply = s.recv(4096)
    assert b" 408 " in reply and time.monotonic() - started < 5
    s.close()


def _guard_threads() -> int:
    return sum(1 for t in threading.enumerate() if "process_request_thread" in t.name)


def test_a_flood_is_answered_or_refused_cleanly_and_threads_end(guard):
    g = guard(delay_s=0.5, limit=8)
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda _: call(g, "POST", "/v1/chat/completions", chat())[0], range(64)))
    assert len(results) == 64 and set(results) <= {200, 503}, results
    assert results.count(200) >= 8 and results.count(503) >= 1
    deadline = time.monotonic() + 5
    while _guard_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _guard_threads() == 0
