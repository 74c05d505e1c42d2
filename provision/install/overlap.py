"""Source builds in the background: the CPU-bound llama-cpp-python build overlaps the I/O-bound installs.

A cold `install --auto` used to run torch, Xinference, transformers, then the ~5 min build,
then xllamacpp, one after the other. The build needs nothing those installs produce (its
own isolated build environment, the environment's interpreter only to pick the Python), so
it starts in a worker thread as soon as the plan is known and the environment exists; the
installer waits for its wheel only at the step that installs it, which comes last in its
environment. A failed build is raised at that step, like a build run in place; Ctrl-C
stops the compiler too.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from provision.install import progress


class BackgroundBuilds:
    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future[Path]] = {}

    def start(self, name: str, build: Callable[[], Path]) -> None:
        if self._pool is None:
            # One worker: two compiler jobs would only fight over the same cores.
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xinfer-setup-build")
        self._futures[name] = self._pool.submit(build)

    def started(self, name: str) -> bool:
        return name in self._futures

    def result(self, name: str) -> Path:
        """The built wheel (blocking until it is there); the build's own error when it failed."""
        return self._futures.pop(name).result()

    def close(self) -> None:
        """Stop builds nobody took (Ctrl-C, or their environment failed before its turn)."""
        if self._pool is None:
            return
        if any(not f.done() for f in self._futures.values()):
            for future in self._futures.values():
                future.cancel()
            progress.kill_running()
        self._pool.shutdown(wait=True)
        self._pool = None
