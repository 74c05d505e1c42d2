"""Human progress on stderr, and streaming a long command into a log file while showing its progress."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provision.redact import redact


class Reporter:
    """One line per event on stderr; build progress lines at most every few seconds."""

    def __init__(self, stream=None, quiet: bool = False, interval_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.interval_s = interval_s
        self._last = 0.0

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"xinfer-setup: {redact(message)}", file=self.stream, flush=True)

    def tick(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self.say(message)


# CMake/ninja progress, e.g. "[ 45%] Building CXX object ..." or "[123/310] Building C object ...".
_PERCENT = re.compile(r"^\s*\[\s*(\d+)%\]")
_NINJA = re.compile(r"^\s*\[(\d+)/(\d+)\]")


def build_progress(line: str) -> int | None:
    """Percent done from one build-output line, or None.

    Samples:  "[ 45%] Building CXX object vendor/llama.cpp/ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o"
              "  [87/142] Building CXX object vendor/llama.cpp/src/CMakeFiles/llama.dir/llama.cpp.o"
    """
    m = _PERCENT.match(line)
    if m:
        return int(m.group(1))
    m = _NINJA.match(line)
    if m and int(m.group(2)) > 0:
        return int(int(m.group(1)) * 100 / int(m.group(2)))
    return None


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    tail: tuple[str, ...]
    log_path: Path


def run_logged(
    argv: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    tail_lines: int = 25,
    cwd: Path | None = None,
) -> CommandResult:
    """Run argv with stdout+stderr appended to log_path; keep the last lines for an error message."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=tail_lines)
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        log.write(redact(f"$ {' '.join(argv)}") + "\n")
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = redact(line)
                log.write(line)
                tail.append(line.rstrip("\n"))
                if on_line is not None:
                    on_line(line)
            rc = proc.wait()
        except BaseException:
            # Ctrl-C: stop the child too; the caller records what is left.
            proc.kill()
            proc.wait()
            raise
        log.write(f"[exit {rc}]\n")
    return CommandResult(rc, tuple(tail), log_path)
