"""Run probe sources side by side, each with a deadline.

Daemon threads rather than a ThreadPoolExecutor: a source stuck inside a C call (an
NVML init against a wedged driver) can neither be killed nor joined, and an executor
would keep the interpreter from exiting until it returned. Subprocesses are bounded by
their own timeouts; this deadline is the backstop for everything else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SourceTimeout(Exception):
    pass


class Background(Generic[T]):
    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self.name = name
        self._fn = fn
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._target, name=f"probe-{name}", daemon=True).start()

    def _target(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as e:  # handed to the caller of result(), which makes it a note
            self._error = e
        finally:
            self._done.set()

    def result(self, timeout: float) -> T:
        if not self._done.wait(timeout):
            raise SourceTimeout(f"{self.name} did not answer within {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
