"""Class 3: a llama-cpp-python wheel that lacks the GPU backend its key promises is never installed.

llama-cpp-python silently builds CPU-only when its flags are legacy or ignored, and a CPU wheel
can sit in a cache under a GPU build's name (abetlen/llama-cpp-python#1723, #1693, #514, #409).
The wheelhouse key says what was asked for; the wheel's own libraries say what it has.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from provision.install.wheelhouse import BuildFailed, BuildRequest, wheel_backends

GPU_BACKENDS = ("cuda", "hip", "metal", "vulkan")


def lacking(wheel: Path, expected: tuple[str, ...]) -> tuple[str, ...]:
    """The GPU backends the plan expects that the wheel has no library for."""
    have = wheel_backends(wheel)
    return tuple(b for b in expected if b in GPU_BACKENDS and b not in have)


def guarded_build(req: BuildRequest, build: Callable[[], Path], say: Callable[[str], None]) -> Path:
    """build() (the wheelhouse's cached or new wheel), refusing one without the planned GPU backend:
    a cached one is removed and built again; a new one that still lacks it is a build failure."""
    wheel = build()
    missing = lacking(wheel, req.expected_backends)
    if not missing:
        return wheel
    say(
        f"warning: {wheel.name} in the wheelhouse ({req.key}) has no {', '.join(missing)} backend, "
        "which this build is planned with (a CPU-only wheel under a GPU key): removing it and building again"
    )
    shutil.rmtree(wheel.parent, ignore_errors=True)
    wheel = build()
    missing = lacking(wheel, req.expected_backends)
    if missing:
        shutil.rmtree(wheel.parent, ignore_errors=True)
        raise BuildFailed(
            f"llama-cpp-python {req.version}: the build has no {', '.join(missing)} backend although "
            f"CMAKE_ARGS asked for it ({' '.join(req.effective_args)}): see the build log; not installed"
        )
    return wheel
