"""Hashes end to end: the sdist against its index's sha256, wheelhouse wheels against the sha256
recorded at build, the receipt's record of the installed wheel, and a replay that demands it."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from provision.install import wheelhouse
from provision.install.index_pages import _absolute, fetch_file, index_sha256
from provision.install.progress import Reporter
from tests.support.auth_index import auth_index

REAL_CACHE = wheelhouse.cache_root()
SDIST_NAME = "llama_cpp_python-0.3.36.tar.gz"


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """The real llama-cpp-python 0.3.36 sdist: the one in the wheelhouse cache when an earlier
    install left it, else fetched from PyPI now (checked against PyPI's sha256), so the tests that
    read it do not depend on which test ran before them."""
    cached = REAL_CACHE / "sdist" / SDIST_NAME
    if cached.is_file():
        return cached
    root = tmp_path_factory.mktemp("sdist-cache")
    return wheelhouse.ensure_sdist("0.3.36", [], Said(), root, ("https://pypi.org/simple",))


class Said(Reporter):
    def __init__(self, stop_on: str | None = None) -> None:
        super().__init__(quiet=True)
        self.lines: list[str] = []
        self.stop_on = stop_on

    def say(self, message: str) -> None:
        self.lines.append(message)
        if self.stop_on and message.startswith(self.stop_on):
            raise _Stopped(message)


class _Stopped(Exception):
    pass


def _entry(root: Path, key: str, content: bytes, sha: str | None) -> Path:
    d = root / "wheelhouse" / key
    d.mkdir(parents=True)
    wheel = d / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llama_cpp/lib/libggml-cpu.so", content)
    meta = {"version": "0.3.36", "backends": ["cpu"]}
    if sha is not None:
        meta["sha256"] = wheelhouse.sha256_file(wheel) if sha == "right" else sha
    (d / "build.json").write_text(json.dumps(meta))
    return wheel


def test_a_wheel_that_matches_its_build_hash_is_reused(tmp_path):
    wheel = _entry(tmp_path, "k1", b"x" * 100, "right")
    said = Said()
    assert wheelhouse.checked_wheel("k1", tmp_path, said) == wheel
    assert said.lines == []


def test_a_corrupted_wheel_is_detected_removed_and_warned_about(tmp_path):
    wheel = _entry(tmp_path, "k1", b"x" * 100, "right")
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    wheel.write_bytes(bytes(data))
    said = Said()
    assert wheelhouse.checked_wheel("k1", tmp_path, said) is None
    assert not wheel.parent.exists()
    assert len(said.lines) == 1 and said.lines[0].startswith("warning:") and "building again" in said.lines[0]


def test_an_entry_without_a_recorded_hash_is_refused(tmp_path):
    """A wheel whose build.json has no sha256 (or no build.json: a copy pushed without its record)
    is not trusted: removed, with a warning, and built again."""
    wheel = _entry(tmp_path, "k1", b"y", None)
    said = Said()
    assert wheelhouse.checked_wheel("k1", tmp_path, said) is None
    assert not wheel.parent.exists()
    assert said.lines[0].startswith("warning:") and "no sha256 recorded" in said.lines[0]


def test_index_sha256_reads_the_link_fragment(tmp_path):
    wheel = tmp_path / "llama_cpp_python-0.3.36-py3-none-any.whl"
    wheel.write_bytes(b"w")
    with auth_index([wheel], "u", "p") as (base, _):
        url = base.replace("http://", "http://u:p@")
        page_hash = index_sha256(("/a/find-links/dir", url), "llama-cpp-python", wheel.name)
        missing = index_sha256((url,), "llama-cpp-python", "llama_cpp_python-9.9.9.tar.gz")
    assert page_hash == wheelhouse.sha256_file(wheel)
    assert missing is None  # not listed: no hash invented


# pip is handed an index nobody answers on: an sdist that arrives came by the page that lists it.
NO_PIP = ["--index-url", "http://127.0.0.1:9/simple", "--no-cache-dir", "--retries", "0", "--timeout", "2"]


def _fake_sdist(tmp_path: Path) -> Path:
    sdist = tmp_path / "served" / "llama_cpp_python-9.9.9.tar.gz"
    sdist.parent.mkdir()
    sdist.write_bytes(b"not really a tarball " * 5000)
    return sdist


def test_the_sdist_comes_from_the_page_listing_it_with_its_credentials_and_hash(tmp_path):
    sdist = _fake_sdist(tmp_path)
    with auth_index([sdist], "u", "p@ss") as (base, log):
        url = base.replace("http://", "http://u:p%40ss@")
        got = wheelhouse.ensure_sdist("9.9.9", NO_PIP, Said(), tmp_path / "cache", (url,))
    assert got == tmp_path / "cache" / "sdist" / sdist.name
    assert got.read_bytes() == sdist.read_bytes()
    sha = wheelhouse.sha256_file(sdist)
    assert got.with_name(got.name + ".sha256").read_text().strip() == sha
    assert f"GET /files/{sdist.name} 200" in log  # the file itself, with the index's credentials


def test_a_fetched_sdist_that_does_not_match_its_published_hash_is_not_kept(tmp_path):
    sdist = _fake_sdist(tmp_path)
    with auth_index([sdist], "u", "p", corrupt=frozenset({sdist.name})) as (base, log):
        url = base.replace("http://", "http://u:p@")
        with pytest.raises(wheelhouse.BuildFailed, match="cannot download the llama-cpp-python 9.9.9 source"):
            wheelhouse.ensure_sdist("9.9.9", NO_PIP, Said(), tmp_path / "cache", (url,))
    assert f"GET /files/{sdist.name} 200" in log  # fetched, found wrong, then left to pip (which fails)
    assert not any((tmp_path / "cache" / "sdist").rglob("*.tar.gz"))


def test_a_redirect_to_another_host_does_not_carry_the_index_credentials(tmp_path):
    """A mirror answering a file with 302 to another host (object storage, a CDN): the file comes,
    the Authorization header stays behind."""
    seen: list[str | None] = []

    class Storage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"data")

        def log_message(self, *a: object) -> None:
            pass

    class Mirror(Storage):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{storage.server_address[1]}/blob")
            self.send_header("Content-Length", "0")
            self.end_headers()

    storage = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Storage)
    mirror = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    for server in (storage, mirror):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://u:secret@127.0.0.1:{mirror.server_address[1]}/files/x.tar.gz"
        digest = fetch_file(url, tmp_path / "x.tar.gz")
    finally:
        for server in (storage, mirror):
            server.shutdown()
            server.server_close()
    assert digest == hashlib.sha256(b"data").hexdigest()
    assert seen[0] is not None and seen[0].startswith("Basic ")  # the mirror got the credentials
    assert seen[1:] == [None]  # the other host did not


def test_index_credentials_go_only_to_the_index_host():
    page = "https://u:p%40ss@mirror.example/simple/llama-cpp-python/"
    same = _absolute(page, "../../files/llama_cpp_python-0.3.36.tar.gz")
    other = _absolute(page, "https://files.pythonhosted.org/packages/ab/llama_cpp_python-0.3.36.tar.gz")
    assert same == "https://u:p%40ss@mirror.example/files/llama_cpp_python-0.3.36.tar.gz"
    assert other == "https://files.pythonhosted.org/packages/ab/llama_cpp_python-0.3.36.tar.gz"


def test_sdist_is_checked_against_pypis_sha256_and_a_bad_copy_refused(tmp_path, sdist):
    """Real: PyPI's simple page publishes the sdist's sha256 (PyPI is reachable here)."""
    sources = ("https://pypi.org/simple",)
    expected = index_sha256(sources, "llama-cpp-python", sdist.name)
    assert expected is not None, "PyPI's simple page lists no sha256 for the sdist"
    copy = tmp_path / "sdist" / sdist.name
    copy.parent.mkdir()
    shutil.copyfile(sdist, copy)
    said = Said()
    assert wheelhouse._sdist_ok(copy, sources, said)
    assert copy.with_name(copy.name + ".sha256").read_text().strip() == expected
    with open(copy, "r+b") as f:
        f.seek(1000)
        f.write(b"\0garbage\0")
    assert not wheelhouse._sdist_ok(copy, sources, said)
    assert "does not match the sha256 of its index" in said.lines[-1]
    # Offline, the hash recorded at download is the reference.
    assert not wheelhouse._sdist_ok(copy, (), said)


@pytest.mark.slow
def test_a_corrupted_wheelhouse_wheel_starts_a_rebuild(tmp_path, sdist):
    """The fault-matrix row: corrupt the real built wheel in a private copy of the cache; build()
    must refuse it and start building (stopped at its first step: the full ~8 min build is what the
    session install does on a cold cache, not repeated here)."""
    req = wheelhouse.BuildRequest("0.3.36", (), ("cpu",), ("avx2",), "x86_64")
    root = tmp_path / "cache"
    (root / "sdist").mkdir(parents=True)
    shutil.copyfile(sdist, root / "sdist" / sdist.name)
    wheel = _entry(root, req.key, b"z" * 1000, "right")
    with open(wheel, "r+b") as f:
        f.seek(10)
        f.write(b"corrupted")
    said = Said(stop_on="building llama-cpp-python")
    with pytest.raises(_Stopped):
        wheelhouse.build(
            req, "uv", Path("/nonexistent/python"), [], [], said, root, sources=("https://pypi.org/simple",)
        )
    assert said.lines[0].startswith("warning:") and req.key in said.lines[0]
    assert not wheel.exists()
    assert said.lines[-1].startswith("building llama-cpp-python 0.3.36")
