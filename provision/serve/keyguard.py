"""The proxy in front of `transformers serve`, which has no API key and names its model by
its path.

- Answers GET /v1/models (and /v1/models/NAME) itself with the served name, and rewrites
  `model` in JSON requests from the served name to the path transformers knows; a request
  naming any other model is refused (404) instead of letting transformers fetch it.
- With a key: refuses any request without `Authorization: Bearer KEY` (401, OpenAI's error shape).
- Bounded: at most MAX_CONNECTIONS handler threads (beyond: 503 with Retry-After), bodies up
  to MAX_BODY (beyond: 413), a body must come with Content-Length (411), a client has
  CLIENT_TIMEOUT_S to send its request (408 / closed), the engine UPSTREAM_TIMEOUT_S to answer (504).
- Relays the rest to the engine on its private loopback port, streaming responses (SSE) as they come.

What it protects: the listening address. The engine's own port is on 127.0.0.1 and has no key,
so other users of this machine can reach it (README, "serve").
"""

from __future__ import annotations

import contextlib
import hmac
import http.client
import json
import queue
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Hop-by-hop headers are the proxy's own business (RFC 9110 7.6.1).
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
MAX_CONNECTIONS = 64
MAX_BODY = 16 * 1024 * 1024  # a long chat with a 128k context is a few MiB of JSON
CLIENT_TIMEOUT_S = 30.0
UPSTREAM_TIMEOUT_S = 600.0
REFUSAL_QUEUE = 256
REFUSAL_READ_S = 1.0


def authorized(header: str | None, api_key: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def _error_body(status: int, message: str, code: str) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()


def models_listing(served_name: str) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": served_name, "object": "model", "created": 0, "owned_by": "xinfer-setup"}],
    }


def _handler(
    upstream_host: str, upstream_port: int, api_key: str | None, served_name: str, upstream_name: str
) -> type[BaseHTTPRequestHandler]:
    class Guard(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = CLIENT_TIMEOUT_S  # socket timeout while reading a request

        def log_message(self, format, *args):  # noqa: A002 - the base class names it so
            pass

        def _send_json(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _fail(self, status: int, message: str, code: str) -> None:
            self.close_connection = True
            self._send_json(status, _error_body(status, message, code), {"Connection": "close"})

        def _read_body(self) -> bytes | None:
            """The request body, or None after answering an error."""
            if self.headers.get("Transfer-Encoding"):
                self._fail(411, "send the body with a Content-Length", "length_required")
                return None
            raw = self.headers.get("Content-Length")
            if raw is None:
                if self.command in ("POST", "PUT", "PATCH"):
                    self._fail(411, "send the body with a Content-Length", "length_required")
                    return None
                return b""
            try:
                length = int(raw)
            except ValueError:
                self._fail(400, "bad Content-Length", "bad_request")
                return None
            if length < 0 or length > MAX_BODY:
                self._fail(413, f"request body over {MAX_BODY} bytes", "request_too_large")
                return None
            try:
                return self.rfile.read(length)
            except TimeoutError:
                self._fail(408, "request body not received in time", "request_timeout")
                return None

        def _relay(self) -> None:
            body = self._read_body()
            if body is None:
                return
            if api_key is not None and not authorized(self.headers.get("Authorization"), api_key):
                self._send_json(401, _error_body(401, "missing or wrong API key", "invalid_api_key"))
                return
            path = self.path.split("?", 1)[0].rstrip("/")
            if self.command == "GET" and path == "/v1/models":
                self._send_json(200, json.dumps(models_listing(served_name)).encode())
                return
            if self.command == "GET" and path.startswith("/v1/models/"):
                if path.removeprefix("/v1/models/") == served_name:
                    self._send_json(200, json.dumps(models_listing(served_name)["data"][0]).encode())
                else:
                    self._send_json(404, _error_body(404, "no such model", "model_not_found"))
                return
            if body and "json" in (self.headers.get("Content-Type") or "json"):
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = None
                if isinstance(payload, dict) and "model" in payload:
                    if payload["model"] not in (served_name, upstream_name):
                        self._send_json(
                            404,
                            _error_body(
                                404,
                                f"model {payload['model']!r} is not served here; this serves {served_name!r}",
                                "model_not_found",
                            ),
                        )
                        return
                    payload["model"] = upstream_name
                    body = json.dumps(payload).encode()
            self._forward(body)

        def _forward(self, body: bytes) -> None:
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in HOP_BY_HOP and k.lower() != "authorization"
            }
            conn = http.client.HTTPConnection(upstream_host, upstream_port, timeout=UPSTREAM_TIMEOUT_S)
            try:
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    response = conn.getresponse()
                except TimeoutError:
                    self._fail(504, "the engine did not answer in time", "upstream_timeout")
                    return
                except (OSError, http.client.HTTPException) as e:
                    self._fail(502, f"the engine is unreachable: {type(e).__name__}", "upstream_unreachable")
                    return
                self.send_response(response.status, response.reason)
                for k, v in response.getheaders():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while chunk := response.read1(65536):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (OSError, http.client.HTTPException):
                self.close_connection = True
            finally:
                conn.close()

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _relay

    return Guard


class BoundedThreadingHTTPServer(ThreadingHTTPServer):
    """One thread per connection, at most `limit` at once. Connections beyond it go to a single
    refusing thread, which reads the request (so the client is not cut off mid-send) and
    answers 503 with Retry-After; beyond REFUSAL_QUEUE of those, they are closed at once. A
    flood therefore costs at most limit + 2 threads."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limit: int):
        self._slots = threading.BoundedSemaphore(limit)
        self._refusals: queue.Queue[socket.socket | None] = queue.Queue(maxsize=REFUSAL_QUEUE)
        self.refused = 0
        super().__init__(address, handler)
        self._refuser = threading.Thread(target=self._refuse_loop, name="keyguard-refuser", daemon=True)
        self._refuser.start()

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            try:
                self._refusals.put_nowait(request)
            except queue.Full:
                self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_loop(self) -> None:
        while (sock := self._refusals.get()) is not None:
            try:
                _read_request(sock, REFUSAL_READ_S)
                body = _error_body(503, "too many connections; retry", "overloaded")
                sock.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )
            except OSError:
                pass
            finally:
                self.shutdown_request(sock)

    def server_close(self) -> None:
        super().server_close()
        with contextlib.suppress(queue.Full):
            self._refusals.put_nowait(None)


def _read_request(sock: socket.socket, within_s: float) -> None:
    """Read one request's head and (up to 1 MiB of) body, for at most within_s seconds."""
    deadline = time.monotonic() + within_s
    data = b""
    sock.settimeout(within_s)
    while b"\r\n\r\n" not in data and len(data) < 65536 and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    need = int(m.group(1)) if m else 0
    while len(rest) < need <= 1 << 20 and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return
        rest += chunk


class KeyGuard:
    """The proxy's HTTP server, run in daemon threads of this process."""

    def __init__(
        self,
        host: str,
        port: int,
        upstream_host: str,
        upstream_port: int,
        api_key: str | None,
        served_name: str = "",
        upstream_name: str = "",
        limit: int = MAX_CONNECTIONS,
    ):
        handler = _handler(upstream_host, upstream_port, api_key, served_name, upstream_name or served_name)
        self.server = BoundedThreadingHTTPServer((host, port), handler, limit)
        self._thread = threading.Thread(target=self.server.serve_forever, name="keyguard", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, join_s: float = 5.0) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(join_s)

    def __enter__(self) -> KeyGuard:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
