"""A thin API-key check in front of an engine that has none (`transformers serve`).

Listens where the user asked, refuses any request without `Authorization: Bearer KEY`
(401, OpenAI's error shape), and relays the rest to the engine on a private loopback port,
streaming responses (SSE) through as they come.
"""

from __future__ import annotations

import hmac
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Hop-by-hop headers are the proxy's own business (RFC 9110 7.6.1).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length"}


def authorized(header: str | None, api_key: str) -> bool:
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def _handler(upstream_host: str, upstream_port: int, api_key: str) -> type[BaseHTTPRequestHandler]:
    class Guard(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 - the base class names it so
            pass

        def _refuse(self) -> None:
            error = {"message": "missing or wrong API key", "type": "invalid_request_error",
                     "code": "invalid_api_key"}
            body = json.dumps({"error": error}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _relay(self) -> None:
            if not authorized(self.headers.get("Authorization"), api_key):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self._refuse()
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() not in HOP_BY_HOP and k.lower() != "authorization"}
            conn = http.client.HTTPConnection(upstream_host, upstream_port, timeout=600)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
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

        do_GET = do_POST = do_DELETE = do_PUT = _relay

    return Guard


class KeyGuard:
    """The guard's HTTP server, run in daemon threads of this process."""

    def __init__(self, host: str, port: int, upstream_host: str, upstream_port: int, api_key: str):
        self.server = ThreadingHTTPServer((host, port), _handler(upstream_host, upstream_port, api_key))
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="keyguard", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> KeyGuard:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
