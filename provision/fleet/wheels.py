"""Wheels made on the controller for hosts that reach no package index.

`fleet probe` needs xinfer-setup on each host before any plan exists, so this module makes the
tool's own wheel set for each host platform: xinfer-setup's wheel, built from this checkout
(`uv build`), or the released one when it runs from a wheel; and its dependencies resolved for
the target (`uv pip compile --python-platform`, metadata only) and fetched with
`pip download --no-deps` for the target's tags (the user's pip configuration applies, as for
install). A wheel set is kept under <fleet dir>/tool/<target>/ and reused while the pins and the
tool's wheel do not change.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from provision import __version__
from provision.bundle.make import project_root, tool_requirements
from provision.errors import OperationFailed, UserError

MIN_PYTHON = (3, 10)
# manylinux glibc levels uv's --python-platform knows (recipes/resolve.toml keeps the same list).
_UV_MANYLINUX = (
    "2.17",
    "2.28",
    "2.31",
    "2.32",
    "2.33",
    "2.34",
    "2.35",
    "2.36",
    "2.37",
    "2.38",
    "2.39",
    "2.40",
)


@dataclass(frozen=True)
class HostFacts:
    """What `raw` learns about a host before anything of ours is there (python, arch, libc)."""

    python: str  # "3.11.2"
    machine: str  # "x86_64"
    libc: str  # "glibc 2.36" or ""
    root: str  # xinfer_root, absolute on the host

    @property
    def python_minor(self) -> tuple[int, int]:
        major, minor = self.python.split(".")[:2]
        return int(major), int(minor)

    @property
    def glibc(self) -> tuple[int, int] | None:
        m = re.match(r"glibc (\d+)\.(\d+)", self.libc)
        return (int(m.group(1)), int(m.group(2))) if m else None

    @property
    def target(self) -> str:
        """A stable name for the wheel set this host needs: cp311-x86_64-manylinux_2_36."""
        glibc = self.glibc
        libc = f"manylinux_{glibc[0]}_{glibc[1]}" if glibc else "linux"
        return f"cp{self.python_minor[0]}{self.python_minor[1]}-{self.machine}-{libc}"


def check_python(name: str, facts: HostFacts) -> None:
    if facts.python_minor < MIN_PYTHON:
        raise UserError(
            f"host {name}: Python {facts.python} is older than "
            f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}; set ansible_python_interpreter to a Python >= "
            f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} on that host"
        )


def uv_platform(facts: HostFacts) -> str:
    glibc = facts.glibc
    levels = [t for t in _UV_MANYLINUX if glibc and tuple(int(x) for x in t.split(".")) <= glibc]
    if not levels:
        return f"{facts.machine}-unknown-linux-gnu"
    return f"{facts.machine}-manylinux_{levels[-1].replace('.', '_')}"


def pip_platforms(facts: HostFacts) -> list[str]:
    """pip download --platform values: every manylinux level the host's glibc runs, newest first."""
    glibc = facts.glibc
    if glibc is None:
        return [f"linux_{facts.machine}"]
    arch = facts.machine
    tags = [f"manylinux_{glibc[0]}_{m}_{arch}" for m in range(glibc[1], 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    tags += [f"{legacy[m]}_{arch}" for m in legacy if m <= glibc[1]]
    return tags


def _uv() -> str:
    from provision.install.executor import uv_bin

    uv = uv_bin()
    if uv is None:
        raise OperationFailed("fleet needs uv (a dependency of xinfer-setup) on the controller")
    return uv


def wheel_content_id(wheel: Path) -> str:
    """A hash of what the wheel installs (its RECORD), not of the zip: rebuilding the same sources
    gives the same id, so hosts are not reinstalled for a new timestamp."""
    with zipfile.ZipFile(wheel) as zf:
        record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        return hashlib.sha256(zf.read(record)).hexdigest()[:16]


def self_wheel(dest: Path) -> Path:
    """xinfer-setup's own wheel: built from this checkout, else the released one of this version."""
    dest.mkdir(parents=True, exist_ok=True)
    root = project_root()
    with tempfile.TemporaryDirectory(prefix="xinfer-fleet-wheel-") as tmp:
        if root is not None:
            out = subprocess.run(
                [_uv(), "build", "--wheel", "--out-dir", tmp, str(root)], capture_output=True, text=True
            )
        else:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--only-binary",
                    ":all:",
                    "-d",
                    tmp,
                    f"xinfer-setup=={__version__}",
                ],
                capture_output=True,
                text=True,
            )
        built = sorted(Path(tmp).glob("xinfer_setup-*.whl"))
        if out.returncode != 0 or not built:
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise OperationFailed(f"cannot make xinfer-setup's own wheel: {last}")
        for old in dest.glob("xinfer_setup-*.whl"):
            old.unlink()
        final = dest / built[0].name
        shutil.move(str(built[0]), final)
    return final


def compile_pins(requirements: list[str], facts: HostFacts) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="xinfer-fleet-") as tmp:
        req = Path(tmp) / "requirements.in"
        req.write_text("\n".join(requirements) + "\n")
        argv = [
            _uv(),
            "pip",
            "compile",
            "--no-header",
            "--no-annotate",
            "--color",
            "never",
            "--python-platform",
            uv_platform(facts),
            "--python-version",
            f"{facts.python_minor[0]}.{facts.python_minor[1]}",
            str(req),
        ]
        from provision.install.executor import Installer
        from provision.install.pipconfig import read_index_config

        argv[4:4] = Installer("uv", read_index_config()).build_flags()
        out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        raise OperationFailed(
            f"cannot resolve xinfer-setup's dependencies for {facts.target}: {' '.join(lines[-3:])[:600]}"
        )
    return [ln.strip() for ln in out.stdout.splitlines() if "==" in ln and not ln.startswith("#")]


def download(pins: list[str], facts: HostFacts, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    # --no-deps without --only-binary: a project published only as an sdist comes down as one and
    # is built into a wheel here (such projects are pure Python), so hosts never build.
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        "--python-version",
        f"{facts.python_minor[0]}.{facts.python_minor[1]}",
        "--implementation",
        "cp",
    ]
    for platform_tag in pip_platforms(facts):
        argv += ["--platform", platform_tag]
    out = subprocess.run(argv + pins, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip() and "WARNING" not in ln]
        raise OperationFailed(f"cannot download wheels for {facts.target}: {' '.join(lines[-3:])[:600]}")
    sdists = sorted(p for p in dest.iterdir() if p.name.endswith((".tar.gz", ".zip", ".tar.bz2")))
    if sdists:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--disable-pip-version-check",
                "-w",
                str(dest),
                *map(str, sdists),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if out.returncode != 0:
            lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
            raise OperationFailed(
                f"cannot build wheels from {', '.join(p.name for p in sdists)}: {' '.join(lines[-2:])[:500]}"
            )
        for p in sdists:
            p.unlink()


@dataclass(frozen=True)
class ToolWheels:
    dir: Path
    wheel: Path  # xinfer-setup's own
    content_id: str
    tar: Path  # the directory as one file, for the push


def tool_wheels(facts: HostFacts, base: Path, self_wheel_path: Path) -> ToolWheels:
    """The wheel set that installs xinfer-setup on hosts like this one, made once per target."""
    d = base / facts.target
    done = d / "pins.txt"
    reqs = tool_requirements()
    stamp = "\n".join(sorted(reqs))
    if not (
        done.exists() and (d / "requirements.txt").exists() and (d / "requirements.txt").read_text() == stamp
    ):
        pins = compile_pins(reqs, facts)
        download(pins, facts, d)
        (d / "requirements.txt").write_text(stamp)
        done.write_text("\n".join(pins) + "\n")
    new_id = wheel_content_id(self_wheel_path)
    wheel = d / self_wheel_path.name
    # The same contents rebuilt keep the old file, so the tar (and every host) stays unchanged.
    if not (wheel.exists() and wheel_content_id(wheel) == new_id):
        for old in d.glob("xinfer_setup-*.whl"):
            old.unlink()
        shutil.copy2(self_wheel_path, wheel)
    tar = pack(d, base / f"{facts.target}.tar")
    return ToolWheels(d, wheel, new_id, tar)


def pack(directory: Path, tar_path: Path) -> Path:
    """One uncompressed tar of a directory of wheels (already compressed), byte-for-byte the same
    for the same files: sorted paths, zero times and owners. Ansible pushes one file, and its
    checksum says whether anything changed."""
    tmp = tar_path.with_suffix(".tar.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for f in sorted(p for p in directory.rglob("*") if p.is_file()):
            rel = f.relative_to(directory)
            if any(part.startswith(".") for part in rel.parts):
                continue
            info = tf.gettarinfo(str(f), arcname=rel.as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o644
            with f.open("rb") as fh:
                tf.addfile(info, fh)
    if tar_path.exists() and _same_file(tar_path, tmp):
        tmp.unlink()
    else:
        tmp.replace(tar_path)
    return tar_path


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return _digest(a) == _digest(b)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
