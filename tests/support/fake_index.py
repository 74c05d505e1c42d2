"""A PEP 503 simple index on 127.0.0.1 serving real (tiny) wheels built in the test.

Each wheel is a valid zip with a .dist-info (METADATA, WHEEL, RECORD), so uv and the refresh's
own reader parse it exactly as they parse PyPI's. The server answers HTTP Range requests (as
files.pythonhosted.org does), so the range-reading path of provision.planner.index_meta is the
one exercised.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class FakeDist:
    name: str
    version: str
    tags: tuple[str, ...] = ("py3-none-any",)  # one wheel per tag
    requires: tuple[str, ...] = ()
    requires_python: str | None = None
    extras: tuple[str, ...] = ()


def build_wheels(dists: list[FakeDist], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for d in dists:
        stem = f"{d.name.replace('-', '_')}-{d.version}"
        for tag in d.tags:
            path = folder / f"{stem}-{tag}.whl"
            meta = ["Metadata-Version: 2.1", f"Name: {d.name}", f"Version: {d.version}"]
            meta += [f"Requires-Python: {d.requires_python}"] if d.requires_python else []
            meta += [f"Provides-Extra: {e}" for e in d.extras]
            meta += [f"Requires-Dist: {r}" for r in d.requires]
            info = f"{stem}.dist-info"
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(f"{d.name.replace('-', '_')}/__init__.py", f"__version__ = {d.version!r}\n")
                zf.writestr(f"{info}/METADATA", "\n".join(meta) + "\n")
                zf.writestr(
                    f"{info}/WHEEL",
                    f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: {tag}\n",
                )
                zf.writestr(f"{info}/RECORD", "")
            out.append(path)
    return out


@contextmanager
def serve_index(wheels: list[Path]) -> Iterator[tuple[str, list[str]]]:
    """(simple index URL, request log) for `wheels`, on 127.0.0.1 until the block ends."""
    by_project: dict[str, list[Path]] = {}
    for w in wheels:
        by_project.setdefault(canonicalize_name(parse_wheel_filename(w.name)[0]), []).append(w)
    log: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
            log.append(f"{self.command} {self.path} {status}")
            self.send_response(status)
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _file(self, body: bytes) -> None:
            rng = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range") or "")
            if not rng:
                self._send(200, body, {"Accept-Ranges": "bytes"})
                return
            a, b = rng.groups()
            start, end = (
                (max(0, len(body) - int(b)), len(body) - 1)
                if not a
                else (int(a), min(len(body) - 1, int(b or len(body) - 1)))
            )
            part = body[start : end + 1]
            self._send(206, part, {"Content-Range": f"bytes {start}-{end}/{len(body)}"})

        def do_GET(self) -> None:  # noqa: N802
            parts = [p for p in self.path.split("?")[0].split("/") if p]
            if len(parts) == 2 and parts[0] == "simple" and parts[1] in by_project:
                links = "".join(
                    f'<a href="/files/{f.name}#sha256={_sha(f)}">{f.name}</a>\n' for f in by_project[parts[1]]
                )
                self._send(200, f"<html><body>{links}</body></html>".encode(), {"Content-Type": "text/html"})
                return
            if len(parts) == 2 and parts[0] == "files":
                match = [f for fs in by_project.values() for f in fs if f.name == parts[1]]
                if match:
                    self._file(match[0].read_bytes())
                    return
            self._send(404, b"")

        do_HEAD = do_GET

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
