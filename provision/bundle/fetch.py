"""Fetch the locked files into the bundle, each checked against the lock's sha256 as it streams.

A file already in the bundle with the right hash is not fetched again (a re-run costs one hash
per file). `file://` URLs (pip's find-links, local mirrors) are copied; http(s) ones are
downloaded with the standard library. A file whose bytes do not hash to the lock's sha256 is
removed and the run fails naming it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from provision.bundle.lock import LockedFile
from provision.bundle.manifest import sha256_of
from provision.errors import OperationFailed


@dataclass(frozen=True)
class Fetched:
    file: LockedFile
    path: Path
    size: int
    reused: bool


def _open(url: str, timeout: float):
    if url.startswith("file:"):
        return open(urllib.request.url2pathname(urllib.parse.urlparse(url).path), "rb")
    req = urllib.request.Request(url, headers={"User-Agent": "xinfer-setup-bundle"})
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (URLs from the user's own indexes)


def fetch_one(f: LockedFile, dest_dir: Path, timeout: float = 120.0, attempts: int = 3) -> Fetched:
    dest = dest_dir / f.filename
    if dest.is_file() and sha256_of(dest) == f.sha256:
        return Fetched(f, dest, dest.stat().st_size, reused=True)
    last = ""
    for attempt in range(attempts):
        fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".part-")
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, _open(f.url, timeout) as src:
                while block := src.read(1 << 20):
                    h.update(block)
                    out.write(block)
            if h.hexdigest() != f.sha256:
                raise OperationFailed(
                    f"{f.filename} from {f.url} does not match the lock's sha256 ({h.hexdigest()[:16]}... "
                    f"instead of {f.sha256[:16]}...): the index served other bytes"
                )
            os.replace(tmp, dest)
            return Fetched(f, dest, dest.stat().st_size, reused=False)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            last = str(getattr(e, "reason", None) or e)
            time.sleep(1 + attempt)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise OperationFailed(f"cannot fetch {f.filename} from {f.url}: {last}")


def fetch_all(files: list[LockedFile], dest_dir: Path, workers: int = 4) -> list[Fetched]:
    dest_dir.mkdir(parents=True, exist_ok=True)
    unique = list({f.filename: f for f in files}.values())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda f: fetch_one(f, dest_dir), unique))


def place(src: Path, dest: Path) -> Path:
    """Copy a local file (a built wheel, our sdist) into the bundle unless the same bytes are there."""
    if dest.is_file() and dest.stat().st_size == src.stat().st_size and sha256_of(dest) == sha256_of(src):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".part-{dest.name}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return dest
