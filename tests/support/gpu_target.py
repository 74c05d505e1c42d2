"""The GPU target the suite installs for (tests/test_gpu_target.py), and its CUDA build started at
the beginning of a session whose wheelhouse lacks it.

The target is this host's real `probe --json` with a recorded H100 (NVML capture) and a recorded
R580 driver (an L40S host's), and no nvcc: an H100 box whose OS, glibc and Python are this host's.

On a cold machine the reduced CUDA build of llama-cpp-python takes most of an hour on 2 cores. The
test module that needs it runs midway through the suite; started at collection instead, the build
uses the cores the other modules leave idle (servers, downloads), and the test's own install then
waits on the wheelhouse's per-key build lock and takes the wheel. With the wheel cached (every run
after the first on a machine) the prebuild only plans, finds it and exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

PROFILES = Path(__file__).resolve().parents[1] / "profiles"
# REDUCED BUILD: the flash-attention kernels become stubs; one arch. See tests/test_gpu_target.py.
REDUCED_CMAKE_ARGS = "-DGGML_CUDA_FA=OFF"


def target_from(this_host: dict) -> dict:
    """This host's real profile with a recorded H100 and a recorded R580 driver, and no nvcc."""
    h100 = json.loads((PROFILES / "linux-h100-driver590.json").read_text())
    r580 = json.loads((PROFILES / "linux-l40s-driver580.json").read_text())
    target = json.loads(json.dumps(this_host))
    target["gpus"] = h100["gpus"]
    target["nvidia"] = r580["nvidia"]
    target["toolchain"] = {**target["toolchain"], "nvcc": None, "cuda_cublas": None}
    target["notes"] = []
    return target


def start_prebuild(log: Path) -> subprocess.Popen | None:
    """This module as a script, in its own process group (so it can be stopped whole)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "w") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "tests.support.gpu_target"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parents[2],
                start_new_session=True,
            )
    except OSError:
        return None  # the test builds it itself


def stop_prebuild(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)


def _prebuild() -> int:
    """Plan the target's llama-cpp-python as `install --profile` does and build it if not cached."""
    from provision.install.executor import Installer
    from provision.install.pipconfig import PYPI_SIMPLE, read_index_config
    from provision.install.progress import Reporter
    from provision.install.run import wheel_build_request
    from provision.install.wheelhouse import build, built_wheel
    from provision.plan import PlanRequest
    from provision.planner import load_recipes, make_plan
    from provision.probe.host import probe_host
    from provision.profile import profile_from_dict

    host = probe_host()
    target = profile_from_dict(target_from(host.to_dict()))
    request = PlanRequest(backends=("llama-cpp-python",), user_cmake_args=REDUCED_CMAKE_ARGS)
    plan = make_plan(target, request, load_recipes())
    llama = plan.backend("llama-cpp-python")
    if llama is None or llama.build is None or llama.build.cuda_toolkit is None:
        print("prebuild: no CUDA build with the PyPI toolkit is planned for the target; nothing to do")
        return 0
    req = wheel_build_request(plan, llama, host)
    if built_wheel(req.key) is not None:
        print(f"prebuild: {req.key} is in the wheelhouse")
        return 0
    index = read_index_config()
    installer = Installer("uv", index)
    build(
        req,
        "uv",
        Path(sys.executable),
        installer.build_flags(),
        index.pip_flags(),
        Reporter(),
        sources=() if index.no_index else (index.index_url or PYPI_SIMPLE, *index.extra_index_urls),
        installer_env=installer.env(),
    )
    return 0


if __name__ == "__main__":
    sys.exit(_prebuild())
