"""llama-cpp-python source builds, kept in our own wheelhouse keyed by what changes the binary.

Facts this design follows (measured on a 2-core box):
- pip's wheel cache is keyed by the source URL only and ignores CMAKE_ARGS: after a CPU
  build, `CMAKE_ARGS=-DGGML_CUDA=on pip install llama-cpp-python` reinstalls the CPU wheel.
  So we build with caches off (`pip wheel --no-cache-dir` / `uv build` of a directory) and
  keep the wheel under <cache>/wheelhouse/<key>/, key = hash(version, effective CMake args,
  CPU features when the build is -march=native, arch).
- ccache only hits when the source sits at the same path every time: the sdist is unpacked
  once to <cache>/src/llama_cpp_python-<version>/ and ccache is used when present.
- `llama_supports_gpu_offload()` says whether a GPU is present now, not what was compiled;
  what a build contains is read from its backend libraries, llama_cpp/lib/libggml-<name>.so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from provision import paths
from provision.errors import OperationFailed
from provision.install.progress import Reporter, build_progress, run_logged
from provision.planner.cmake import effective_args, option

if TYPE_CHECKING:
    from provision.install.cuda_toolkit import Toolkit

PROJECT = "llama-cpp-python"
SDIST_STEM = "llama_cpp_python"

# CPU flags that change what -march=native compiles in ggml; other flags (e.g. "ht") do not.
_ISA_FLAG = re.compile(
    r"^(sse|ssse|avx|fma|f16c|amx|bmi|vnni|sve|asimd|neon|dotprod|i8mm|bf16|fp16|fphp|"
    r"asimdhp|asimddp|sme|lsx|lasx|vsx|riscv|rvv|zfh)"
)


class BuildFailed(OperationFailed):
    def __init__(self, message: str, log_path: Path | None = None) -> None:
        super().__init__(message)
        self.log_path = log_path


@dataclass(frozen=True)
class BuildRequest:
    version: str
    cmake_args: tuple[str, ...]
    expected_backends: tuple[str, ...]
    cpu_features: tuple[str, ...]
    arch: str
    # The nvcc version the plan was made with (CUDA builds with the host's toolkit); checked at build.
    nvcc_version: str | None = None
    # The PyPI CUDA toolkit (its nvcc version) the build takes, when the plan says so.
    cuda_toolkit: str | None = None
    # The build host's C library and compiler ("glibc 2.36", "gcc 12.2.0"): the wheel's glibc
    # floor and its code generator.
    libc: str | None = None
    cc: str | None = None
    hipcc_version: str | None = None

    @property
    def cuda(self) -> bool:
        return cmake_option(self.effective_args, "GGML_CUDA") in ("ON", "1", "TRUE", "YES")

    @property
    def hip(self) -> bool:
        return cmake_option(self.effective_args, "GGML_HIP") in ("ON", "1", "TRUE", "YES")

    @property
    def effective_args(self) -> tuple[str, ...]:
        return effective_args(self.cmake_args)

    @property
    def native(self) -> bool:
        return cmake_option(self.effective_args, "GGML_NATIVE") not in ("OFF", "0", "FALSE", "NO")

    @property
    def key(self) -> str:
        return wheelhouse_key(self)


def cache_root(environ=os.environ) -> Path:
    return paths.cache_dir(environ)


def split_cmake_args(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def cmake_option(args: tuple[str, ...], name: str) -> str | None:
    """The value the last -D`name` gives, upper-cased (ON/OFF compare case-blind); None if absent."""
    value = option(args, name)
    return value.upper() if value is not None else None


def isa_features(flags: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({f for f in flags if _ISA_FLAG.match(f)}))


def wheelhouse_key(req: BuildRequest) -> str:
    """What the binary depends on: the sources and flags, the CPU it targets, and the build host's
    glibc (its floor), compiler and GPU toolkit. Fleet groups hosts by it, so a wheel built against
    one toolkit or glibc is never pushed to a host planned for another."""
    payload = {
        "project": PROJECT,
        "version": req.version,
        "cmake_args": list(req.effective_args),
        "arch": req.arch,
        # A -march=native build runs only on CPUs with at least these features.
        "cpu_features": list(req.cpu_features) if req.native else [],
        "libc": req.libc,
        "cc": req.cc,
        "nvcc": (req.cuda_toolkit or req.nvcc_version) if req.cuda else None,
        "cuda_toolkit": "pypi" if req.cuda and req.cuda_toolkit else None,
        "hipcc": req.hipcc_version if req.hip else None,
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"{req.version}-{digest[:16]}"


_LIB = re.compile(r"(?:^|/)lib/(?:lib)?ggml-([a-z0-9]+)(?:-[a-z0-9_]+)?\.(?:so|dylib|dll)$")


def backends_in_names(names: list[str]) -> set[str]:
    """ggml backends from library paths inside a llama-cpp-python wheel or install.

    Sample (a CPU build of 0.3.36 here): llama_cpp/lib/libggml-base.so, llama_cpp/lib/libggml-cpu.so,
    llama_cpp/lib/libggml.so, llama_cpp/lib/libllama.so. A portable build has libggml-cpu-haswell.so etc.
    A CUDA build adds libggml-cuda.so. "base" is the core, not a backend.
    """
    found = set()
    for n in names:
        m = _LIB.search(n)
        if m and m.group(1) != "base":
            found.add(m.group(1))
    return found


def wheel_backends(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return backends_in_names(zf.namelist())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checked_wheel(key: str, root: Path, reporter: Reporter) -> Path | None:
    """The wheelhouse's wheel for key if its bytes are still the ones built; else None (entry removed).

    build.json keeps the wheel's sha256 from the build; a wheel that no longer matches it (a
    truncated copy, a disk error, tampering) is not installed: it is removed, with a warning, and
    rebuilt. An entry with no recorded hash is refused the same way: whatever bytes it has now
    are not known to be the ones built (a copy pushed without its record included).
    """
    wheel = built_wheel(key, root)
    if wheel is None:
        return None
    meta_path = wheel.parent / "build.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    actual = sha256_file(wheel)
    recorded = meta.get("sha256")
    if recorded is None:
        reporter.say(
            f"warning: {wheel.name} in the wheelhouse ({key}) has no sha256 recorded when it was built: "
            "refusing it, removing it and building again"
        )
        shutil.rmtree(wheel.parent, ignore_errors=True)
        return None
    if recorded != actual:
        reporter.say(
            f"warning: {wheel.name} in the wheelhouse ({key}) does not match the sha256 recorded when it was "
            f"built ({recorded[:16]}…, now {actual[:16]}…): removing it and building again"
        )
        shutil.rmtree(wheel.parent, ignore_errors=True)
        return None
    return wheel


def built_wheel(key: str, root: Path | None = None) -> Path | None:
    d = (root or cache_root()) / "wheelhouse" / key
    wheels = sorted(d.glob("*.whl")) if d.is_dir() else []
    return wheels[0] if wheels else None


def ensure_sdist(
    version: str, pip_flags: list[str], reporter: Reporter, root: Path, sources: tuple[str, ...] = ()
) -> Path:
    """The sdist, downloaded once and checked against the sha256 the index publishes for it, on
    download and again on every reuse. Fetched straight from the index page that lists it, with
    that hash; pip (which honours every index setting) is the fallback where that cannot be done."""
    target = root / "sdist"
    name = f"{SDIST_STEM}-{version}.tar.gz"
    existing = target / name
    if existing.exists():
        if _sdist_ok(existing, sources, reporter):
            return existing
        existing.unlink()
    target.mkdir(parents=True, exist_ok=True)
    reporter.say(f"downloading {PROJECT} {version} source")
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        got = _fetch_listed(sources, name, Path(tmp))
        if got is None:
            got = _pip_download(version, pip_flags, Path(tmp))
            if not _sdist_ok(got, sources, reporter):
                raise BuildFailed(f"the downloaded {got.name} does not match the sha256 its index publishes")
        final = target / got.name
        os.replace(got, final)
        stamp = got.with_name(got.name + ".sha256")
        if stamp.exists():
            os.replace(stamp, final.with_name(final.name + ".sha256"))
    return final


def _fetch_listed(sources: tuple[str, ...], name: str, into: Path) -> Path | None:
    """The file from the first index page listing it with a sha256, when the bytes match that hash.

    `pip download` of an sdist also builds its metadata (an isolated build environment, the 76 MB
    tarball unpacked): 28.6 s alone here, and 42 s before the build could start in a cold
    `install --auto`, all of it on the build's critical path. A page we cannot read (a private CA,
    a find-links directory) or a file without a published hash leaves it to pip."""
    from provision.install.index_pages import fetch_file, index_file

    listed = index_file(sources, PROJECT, name)
    if listed is None or listed.sha256 is None:
        return None
    dest = into / name
    if fetch_file(listed.url, dest) != listed.sha256:
        dest.unlink(missing_ok=True)
        return None
    dest.with_name(name + ".sha256").write_text(listed.sha256 + "\n")
    return dest


def _pip_download(version: str, pip_flags: list[str], into: Path) -> Path:
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-d",
        str(into),
        *pip_flags,
        f"{PROJECT}=={version}",
    ]
    out = subprocess.run(argv, capture_output=True, text=True)
    got = sorted(into.glob(f"{SDIST_STEM}-{version}.tar.gz"))
    if out.returncode != 0 or not got:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildFailed(f"cannot download the {PROJECT} {version} source: {last}")
    return got[0]


def _sdist_ok(path: Path, sources: tuple[str, ...], reporter: Reporter) -> bool:
    """The file's sha256 against the index's (or, offline, the one recorded when it was checked)."""
    actual = sha256_file(path)
    stamp = path.with_name(path.name + ".sha256")
    from provision.install.index_pages import index_sha256

    expected = index_sha256(sources, PROJECT, path.name) if sources else None
    where = "its index"
    if expected is None and stamp.exists():
        expected, where = stamp.read_text().strip(), "the hash recorded when it was downloaded"
    if expected is None:
        reporter.say(f"{path.name}: no index publishes a sha256 for it; recording {actual[:16]}…")
    elif expected != actual:
        reporter.say(f"warning: {path.name} does not match the sha256 of {where}: fetching it again")
        return False
    stamp.write_text(actual + "\n")
    return True


def ensure_source(sdist: Path, version: str, root: Path) -> Path:
    """Unpack to a fixed path (once) so compiler caches see the same file names every build."""
    src = root / "src" / f"{SDIST_STEM}-{version}"
    if (src / "pyproject.toml").exists():
        return src
    src.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=src.parent) as tmp, tarfile.open(sdist) as tf:
        tf.extractall(tmp, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(tmp)  # noqa: S202
        unpacked = Path(tmp) / f"{SDIST_STEM}-{version}"
        if not (unpacked / "pyproject.toml").exists():
            raise BuildFailed(f"{sdist} does not hold {SDIST_STEM}-{version}/pyproject.toml")
        if src.exists():
            shutil.rmtree(src)
        os.replace(unpacked, src)
    return src


def compiler_launchers(args: tuple[str, ...]) -> tuple[str, ...]:
    """ccache when installed: a rebuild of unchanged sources takes seconds instead of minutes."""
    if shutil.which("ccache") is None:
        return ()
    langs = ["C", "CXX"] + (["CUDA"] if cmake_option(args, "GGML_CUDA") in ("ON", "1") else [])
    return tuple(
        f"-DCMAKE_{lang}_COMPILER_LAUNCHER=ccache"
        for lang in langs
        if cmake_option(args, f"CMAKE_{lang}_COMPILER_LAUNCHER") is None
    )


def cuda_build_env(
    req: BuildRequest, environ: dict[str, str] | None = None, root: Path | None = None
) -> dict[str, str]:
    """For a CUDA build: CUDACXX and PATH for the planned nvcc, so CMake finds that compiler (the
    classic "No CMAKE_CUDA_COMPILER could be found" when nvcc is off PATH). {} for other builds."""
    if not req.cuda:
        return {}
    from provision.probe.system import System
    from provision.probe.toolchain import find_nvcc, parse_nvcc_version

    system = System.current()
    if environ is not None:
        system = dataclasses.replace(system, env=dict(environ))
    if root is not None:  # tests: /usr/local/cuda under another root
        system = dataclasses.replace(system, root=root)
    nvcc = find_nvcc(system)
    if nvcc is None:
        raise BuildFailed(
            f"{PROJECT} {req.version}: a CUDA build is planned but no nvcc is on PATH, in $CUDA_HOME/bin "
            "or in /usr/local/cuda/bin (install the CUDA toolkit, or set CUDA_HOME)"
        )
    if req.nvcc_version:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=30)
        found = parse_nvcc_version(out.stdout + out.stderr)
        if found and found.split(".")[:2] != req.nvcc_version.split(".")[:2]:
            raise BuildFailed(
                f"{PROJECT} {req.version}: the plan was made for nvcc {req.nvcc_version}, "
                f"but {nvcc} is {found}"
            )
    bin_dir = str(Path(nvcc).parent)
    path = (environ if environ is not None else os.environ).get("PATH", "")
    env = {"CUDACXX": str(nvcc), "PATH": bin_dir + (os.pathsep + path if path else "")}
    env["CUDAToolkit_ROOT"] = str(Path(os.path.realpath(nvcc)).parent.parent)
    return env


def _pypi_toolkit(
    req: BuildRequest, root: Path, index_flags: list[str], reporter: Reporter, installer_env: dict[str, str]
) -> Toolkit | None:
    """The PyPI CUDA toolkit the plan chose for this build, installed (cached); None otherwise."""
    if not (req.cuda and req.cuda_toolkit):
        return None
    from provision.install import cuda_toolkit
    from provision.install.executor import uv_bin
    from provision.planner.toolkit import toolkit_by_nvcc

    recipe = toolkit_by_nvcc(req.cuda_toolkit)
    if recipe is None:
        raise BuildFailed(
            f"{PROJECT} {req.version}: the plan takes CUDA toolkit {req.cuda_toolkit} from PyPI, "
            "which recipes/cuda_toolkit.toml does not describe"
        )
    uv = uv_bin()
    if uv is None:
        raise OperationFailed("uv is not installed: it installs the CUDA toolkit from PyPI")
    # `uv build`'s flags, as `uv pip install` spells them.
    flags = ["--constraint" if f == "--build-constraint" else f for f in index_flags]
    return cuda_toolkit.ensure_toolkit(recipe, root, uv, flags, reporter, installer_env)


def _toolkit_record(toolkit: Toolkit | None) -> dict | None:
    if toolkit is None:
        return None
    return {"nvcc": toolkit.recipe.nvcc, "source": "pypi", "packages": list(toolkit.recipe.packages)}


def _fix_runpaths(wheel: Path, toolkit: Toolkit) -> list[str]:
    from provision.install.wheel_rpath import fix_wheel_runpaths

    patchelf = toolkit.tool("patchelf")
    if patchelf is None:
        raise BuildFailed(f"the CUDA toolkit at {toolkit.home} has no patchelf to set the run paths")
    return fix_wheel_runpaths(wheel, patchelf, toolkit.recipe.rpath_from_lib)


def build(
    req: BuildRequest,
    builder: str,
    target_python: Path,
    index_flags: list[str],
    pip_flags: list[str],
    reporter: Reporter,
    root: Path | None = None,
    sources: tuple[str, ...] = (),
    installer_env: dict[str, str] | None = None,
) -> Path:
    """The wheel for req: from the wheelhouse when built before (and unchanged), else built now (logged).

    `sources` are the indexes to check the sdist's sha256 against (pip's configured ones)."""
    root = root or cache_root()
    cached = checked_wheel(req.key, root, reporter)
    if cached is not None:
        reporter.say(f"{PROJECT} {req.version}: using the wheel built before ({cached.parent.name})")
        return cached
    from provision.lock import root_lock

    # One build per key at a time: two would share the fixed build tree (and waste the cores);
    # the one that waited then finds the other's wheel.
    with root_lock(root / "build" / f".lock-{req.key}", wait=True, say=reporter.say):
        cached = checked_wheel(req.key, root, reporter)
        if cached is not None:
            reporter.say(f"{PROJECT} {req.version}: using the wheel built meanwhile ({cached.parent.name})")
            return cached
        return _build(
            req, builder, target_python, index_flags, pip_flags, reporter, root, sources, installer_env or {}
        )


def _build(
    req: BuildRequest,
    builder: str,
    target_python: Path,
    index_flags: list[str],
    pip_flags: list[str],
    reporter: Reporter,
    root: Path,
    sources: tuple[str, ...],
    installer_env: dict[str, str],
) -> Path:
    from provision.planner.runtime_env import host_runtime_env

    src = ensure_source(ensure_sdist(req.version, pip_flags, reporter, root, sources), req.version, root)
    log_path = root / "logs" / f"{PROJECT}-{req.key}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    args = req.effective_args + compiler_launchers(req.effective_args)
    toolkit = _pypi_toolkit(req, root, index_flags, reporter, installer_env)
    toolkit_env: dict[str, str] = {}
    if toolkit is not None:
        from provision.install import cuda_toolkit

        # Paths of this host's cache: given to CMake, never part of the key or the recorded args.
        args += cuda_toolkit.cmake_args(toolkit)
        toolkit_env = cuda_toolkit.build_env(toolkit, os.environ.get("PATH", ""))
    env = {
        **installer_env,  # pip's cert/proxy settings for uv's build-environment downloads
        "CMAKE_ARGS": " ".join(args),
        "FORCE_CMAKE": "1",
        "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1),
        # A fixed build tree per key (scikit-build-core's setting): ccache sees the same paths.
        "SKBUILD_BUILD_DIR": str(root / "build" / req.key),
        **host_runtime_env(),  # HSA_OVERRIDE_GFX_VERSION, WSL2's libcuda: provision.planner.runtime_env
        **(toolkit_env or cuda_build_env(req)),
    }
    out_dir = root / "wheelhouse" / f".tmp-{req.key}-{os.getpid()}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    if builder == "uv":
        from provision.install.executor import uv_bin

        uv = uv_bin()
        if uv is None:
            raise OperationFailed("uv is not installed: build with pip (--installer pip) or install uv")
        argv = [
            uv,
            "build",
            "--wheel",
            "--python",
            str(target_python),
            "--out-dir",
            str(out_dir),
            *index_flags,
            str(src),
        ]
    else:
        # -v: pip otherwise hides the compiler output we log and take progress from.
        argv = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-cache-dir",
            "--no-deps",
            "-v",
            "--disable-pip-version-check",
            "-w",
            str(out_dir),
            *pip_flags,
            str(src),
        ]
    reporter.say(
        f"building {PROJECT} {req.version} with CMAKE_ARGS='{' '.join(req.effective_args)}' (log: {log_path})"
    )
    started = time.monotonic()

    def on_line(line: str) -> None:
        pct = build_progress(line)
        if pct is not None:
            reporter.tick(f"building {PROJECT}: {pct}% ({time.monotonic() - started:.0f} s)")

    try:
        result = run_logged(argv, log_path, env=env, on_line=on_line)
        wheels = sorted(out_dir.glob("*.whl"))
        if result.returncode != 0 or not wheels:
            tail = "\n  ".join(result.tail[-15:])
            raise BuildFailed(
                f"{PROJECT} {req.version} build failed (exit {result.returncode}); "
                f"last lines:\n  {tail}\nfull log: {log_path}",
                log_path,
            )
        found = wheel_backends(wheels[0])
        runpaths_fixed: list[str] = []
        if toolkit is not None:
            runpaths_fixed = _fix_runpaths(wheels[0], toolkit)
        missing = [b for b in req.expected_backends if b not in found]
        if missing:
            raise BuildFailed(
                f"{PROJECT} {req.version} built without the planned backend(s) {', '.join(missing)} "
                f"(it has: {', '.join(sorted(found)) or 'none'}); a silent CPU-only build — see {log_path}",
                log_path,
            )
        final_dir = root / "wheelhouse" / req.key
        final_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "build.json").write_text(
            json.dumps(
                {
                    "version": req.version,
                    "cmake_args": list(req.effective_args),
                    "cpu_features": list(req.cpu_features),
                    "native": req.native,
                    "backends": sorted(found),
                    "sha256": sha256_file(wheels[0]),
                    "build_s": round(time.monotonic() - started, 1),
                    "log": str(log_path),
                    "cuda_toolkit": _toolkit_record(toolkit),
                    "runpaths_fixed": runpaths_fixed,
                    "build_host": {"libc": req.libc, "cc": req.cc},
                },
                indent=2,
            )
        )
        os.replace(out_dir / "build.json", final_dir / "build.json")
        final = final_dir / wheels[0].name
        os.replace(wheels[0], final)  # the wheel last: its presence means the entry is complete
        reporter.say(
            f"built {PROJECT} {req.version} in {time.monotonic() - started:.0f} s "
            f"(backends: {', '.join(sorted(found))})"
        )
        return final
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
