"""The product's steps that gpu_check.sh drives on a lent GPU machine (offline), one subcommand each.

    python -m smoke.gpu_check nvml-raw                  # NVML's raw answers, as a test fixture
    python -m smoke.gpu_check trim-sdist SDIST OUT.tar.gz
    python -m smoke.gpu_check build --plan PLAN --sdist TRIMMED --cache DIR
    python -m smoke.gpu_check verify --plan PLAN --python PY

Each calls the product's own code: the wheelhouse build with the CMake args the plan chose
(provision.install.run.wheel_build_request, provision.install.wheelhouse.build), and verify's checks
(provision.install.verify: import, torch variant and arch list, llama.cpp backend libraries).
Only what cannot be had offline is replaced: the sdist comes trimmed from the carried folder,
and the build uses the machine's own scikit-build-core/cmake/ninja (--no-build-isolation).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

# Parts of the llama-cpp-python sdist no build reads (a .git, docs, sample models, tests, web
# assets): 0.3.36's sdist is 76.6 MB (a 39 MB .git pack, 75 MB of vocab models unpacked);
# trimmed, 7.4 MB. Paths are relative to the sdist's top folder; of tools/ only tools/mtmd is
# kept (its CMakeLists builds it).
TRIM = (
    ".git",
    "docs",
    "examples",
    "tests",
    "docker",
    "vendor/llama.cpp/models",
    "vendor/llama.cpp/docs",
    "vendor/llama.cpp/media",
    "vendor/llama.cpp/benches",
    "vendor/llama.cpp/tests",
    "vendor/llama.cpp/examples",
    "vendor/llama.cpp/gguf-py",
    "vendor/llama.cpp/app",
    "vendor/llama.cpp/pocs",
    "vendor/llama.cpp/skills",
    "vendor/llama.cpp/conversion",
    "vendor/llama.cpp/requirements",
    "vendor/llama.cpp/grammars",
    "vendor/llama.cpp/ci",
)
KEEP_TOOLS = ("mtmd",)


def record_nvml(nvml: Any) -> dict[str, Any]:
    """What NVML answers, in the shape of tests' FakeNvml: driver, CUDA version, each GPU's
    name, memory (MiB), compute capability and MIG mode (None where "Not Supported")."""
    nvml.nvmlInit()
    try:

        def text(v: Any) -> str:
            return v.decode() if isinstance(v, bytes) else str(v)

        gpus = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            try:
                mig: int | None = int(nvml.nvmlDeviceGetMigMode(h)[0])
            except nvml.NVMLError:
                mig = None
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(h)
            gpus.append(
                [
                    text(nvml.nvmlDeviceGetName(h)),
                    int(nvml.nvmlDeviceGetMemoryInfo(h).total) // 2**20,
                    [int(major), int(minor)],
                    mig,
                ]
            )
        return {
            "driver": text(nvml.nvmlSystemGetDriverVersion()),
            "cuda": int(nvml.nvmlSystemGetCudaDriverVersion()),
            "gpus": gpus,
        }
    finally:
        nvml.nvmlShutdown()


def trim_sdist(sdist: Path, out: Path) -> dict[str, int]:
    """A copy of the sdist without what no build reads; the same top folder and file names."""
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tf:
            tf.extractall(tmp, filter="data")
        (top,) = list(Path(tmp).iterdir())
        for rel in TRIM:
            shutil.rmtree(top / rel, ignore_errors=True)
        tools = top / "vendor/llama.cpp/tools"
        for t in tools.iterdir() if tools.is_dir() else ():
            if t.is_dir() and t.name not in KEEP_TOOLS:
                shutil.rmtree(t)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out, "w:gz", compresslevel=9) as tf:
            tf.add(top, arcname=top.name)
    return {"from_bytes": sdist.stat().st_size, "to_bytes": out.stat().st_size}


def _plan(path: Path):
    from provision.plan import plan_from_dict

    return plan_from_dict(json.loads(path.read_text()))


def build(plan_path: Path, sdist: Path, cache: Path) -> dict[str, Any]:
    """The product's wheelhouse build of llama-cpp-python with the plan's CMake args, offline."""
    from provision.install import wheelhouse
    from provision.install.progress import Reporter
    from provision.install.run import wheel_build_request

    plan = _plan(plan_path)
    backend = plan.backend("llama-cpp-python")
    if backend is None or backend.action != "install" or backend.build is None:
        raise SystemExit(f"gpu_check: the plan does not build llama-cpp-python: {backend and backend.reason}")
    req = wheel_build_request(plan, backend)
    # The carried (trimmed) sdist stands where the build looks for the downloaded one, with the
    # hash recorded for it; a real sdist already there (a warm cache) is left alone.
    target = cache / "sdist" / f"{wheelhouse.SDIST_STEM}-{req.version}.tar.gz"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sdist, target)
        target.with_name(target.name + ".sha256").write_text(wheelhouse.sha256_file(target) + "\n")
    wheel = wheelhouse.build(
        req, "pip", Path(sys.executable), [], ["--no-index", "--no-build-isolation"], Reporter(), cache
    )
    record = wheel.parent / "build.json"
    info = json.loads(record.read_text()) if record.exists() else {}
    return {
        "wheel": str(wheel),
        "cmake_args": list(req.effective_args),
        "key": req.key,
        "expected_backends": list(req.expected_backends),
        "backends": sorted(wheelhouse.wheel_backends(wheel)),
        "build_s": info.get("build_s"),
    }


def verify(plan_path: Path, python: Path) -> dict[str, Any]:
    """verify's checks for llama-cpp-python (and the torch the plan wants) in `python`'s environment."""
    from provision.install.run import verify_environment
    from provision.plan import PRIMARY_ENV

    plan = _plan(plan_path)
    env = plan.environment(PRIMARY_ENV)
    assert env is not None
    checks = [c.as_dict() for c in verify_environment(plan, env, python, ("llama-cpp-python",))]
    return {"ok": all(c["ok"] for c in checks), "checks": checks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smoke.gpu_check")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("nvml-raw")
    t = sub.add_parser("trim-sdist")
    t.add_argument("sdist", type=Path)
    t.add_argument("out", type=Path)
    b = sub.add_parser("build")
    b.add_argument("--plan", type=Path, required=True)
    b.add_argument("--sdist", type=Path, required=True)
    b.add_argument("--cache", type=Path, required=True)
    v = sub.add_parser("verify")
    v.add_argument("--plan", type=Path, required=True)
    v.add_argument("--python", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "nvml-raw":
        import pynvml

        result: dict[str, Any] = record_nvml(pynvml)
    elif args.cmd == "trim-sdist":
        result = trim_sdist(args.sdist, args.out)
    elif args.cmd == "build":
        result = build(args.plan, args.sdist, args.cache)
    else:
        result = verify(args.plan, args.python)
    print(json.dumps(result, indent=2))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
