"""A local simple index (PEP 503 pages) that demands HTTP Basic auth, for credentialed-mirror tests.

It serves the project pages of real wheel and sdist files and answers 401 to a request without
the right Authorization header, so a client that drops or mangles credentials fails the test.
Files named in `corrupt` are served with one byte flipped (the page keeps the true sha256): a
tampering mirror or a broken transfer.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def auth_index(
    wheels: list[Path], user: str, password: str, corrupt: frozenset[str] = frozenset()
) -> Iterator[tuple[str, list[str]]]:
    """(base URL without credentials, log of "METHOD path status") for a Basic-auth index."""
    want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    by_project: dict[str, list[Path]] = {}
    for w in wheels:
        project = (
            parse_wheel_filename(w.name)[0] if w.name.endswith(".whl") else parse_sdist_filename(w.name)[0]
        )
        by_project.setdefault(project, []).append(w)
    log: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bytes | None) -> None:
            if self.headers.get("Authorization") != want:
                status, body = 401, b""
            elif body is None:
                status, body = 404, b""
            else:
                status = 200
            log.append(f"{self.command} {self.path} {status}")
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
            if status == 200 and self.path.startswith("/simple"):
                self.send_header("Content-Type", "text/html")  # uv refuses a page without one
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _page(self) -> bytes | None:
            parts = [p for p in self.path.split("?")[0].split("/") if p]
            if len(parts) == 2 and parts[0] == "simple":
                files = by_project.get(canonicalize_name(parts[1]))
                if files is None:
                    return None
                links = "".join(f'<a href="/files/{f.name}#sha256={_sha(f)}">{f.name}</a>\n' for f in files)
                return f"<html><body>{links}</body></html>".encode()
            if len(parts) == 2 and parts[0] == "files":
                match = [f for ws in by_project.values() for f in ws if f.name == parts[1]]
                if not match:
                    return None
                body = match[0].read_bytes()
                return body[:-1] + bytes([body[-1] ^ 0xFF]) if parts[1] in corrupt else body
            return None

        def do_GET(self) -> None:  # noqa: N802
            self._answer(self._page())

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(self._page())

        def log_message(self, *a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple", log
    finally:
        server.shutdown()
        server.server_close()
