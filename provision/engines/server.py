"""A server process we own from start to finish: its own process group, a log file, a
bounded wait until it answers GET /v1/models, and a stop that leaves nothing behind.

SIGTERM goes to the whole group (engines fork workers), SIGKILL follows after a grace
period. An exit by our SIGTERM is clean whether the child died of the signal (-15) or
caught it and exited 143 (uvicorn re-raises it). Every server still running when the
interpreter exits is killed, so an exception or Ctrl-C anywhere cannot leak one.

The server's output reaches its log through a pipe we read line by line and redact (its own
API key, and everything provision/redact.py masks) before a byte is written: engines log their
arguments (vLLM's "non-default args", SGLang's ServerArgs), key included.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from provision.errors import OperationFailed
from provision.redact import LineRedactor

# Server processes alive right now, for the exit-time sweep.
_LIVE: set[ManagedServer] = set()

CLEAN_EXIT_CODES = (0, -signal.SIGTERM, 128 + signal.SIGTERM)


class ServerError(OperationFailed):
    """A server that would not start, died, or answered garbage; carries its last log lines."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


@dataclass(frozen=True)
class StopResult:
    returncode: int | None
    clean: bool
    killed: bool  # SIGKILL was needed


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now; the OS picks it, we release it at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def offline_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment with every hub switched off, for engine processes."""
    from provision.planner.runtime_env import host_runtime_env

    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(
        host_runtime_env(env)
    )  # HSA_OVERRIDE_GFX_VERSION, WSL2's libcuda: provision.planner.runtime_env
    env.update(extra or {})
    return env


def tail_lines(path: Path, n: int = 20) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as f:
            return "".join(deque(f, maxlen=n)).rstrip()
    except OSError:
        return ""


class ManagedServer:
    def __init__(
        self,
        argv: list[str],
        *,
        host: str,
        port: int,
        log_path: Path,
        env: dict[str, str] | None = None,
        api_key: str | None = None,
        ready_timeout_s: float = 120.0,
        grace_s: float = 10.0,
        cwd: Path | None = None,
    ):
        self.argv = list(argv)
        self.host = host
        self.port = port
        self.log_path = Path(log_path)
        self.env = offline_env(env)
        self.api_key = api_key
        self.ready_timeout_s = ready_timeout_s
        self.grace_s = grace_s
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.ready_s: float | None = None
        self.models: list[str] = []
        self.stop_result: StopResult | None = None
        self._copier: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def log_tail(self, n: int = 20) -> str:
        return tail_lines(self.log_path, n)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> float:
        """Start the process and wait until it serves /v1/models; returns seconds to ready."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        log = self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                self.argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except BaseException:
            log.close()
            raise
        assert self.process.stdout is not None
        self._copier = threading.Thread(
            target=_copy_redacted,
            args=(self.process.stdout, log, (self.api_key,) if self.api_key else ()),
            name=f"log {self.log_path.name}",
            daemon=True,
        )
        self._copier.start()
        _LIVE.add(self)
        try:
            self.models = self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.perf_counter() - started
        return self.ready_s

    def _wait_ready(self, started: float) -> list[str]:
        deadline = started + self.ready_timeout_s
        process = self.process
        assert process is not None, "start() launches the process before waiting on it"
        while True:
            code = process.poll()
            if code is not None:
                if self._copier is not None:
                    self._copier.join(timeout=5)  # its last lines into the log first
                raise ServerError(f"server exited with code {code} before it was ready", self.log_tail())
            models = self._probe_models()
            if models is not None:
                return models
            if time.perf_counter() >= deadline:
                raise ServerError(f"server not ready after {self.ready_timeout_s:.0f} s", self.log_tail())
            time.sleep(0.2)

    def _probe_models(self) -> list[str] | None:
        """Model ids once the server answers; None while it is still coming up."""
        request = urllib.request.Request(self.base_url + "/models")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                body = response.read()
        except urllib.error.HTTPError as e:
            # 503 while loading is normal; 401/404 mean a wrong server or key, not "loading".
            if e.code in (401, 403, 404):
                raise ServerError(f"GET /v1/models answered HTTP {e.code}", self.log_tail()) from None
            return None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return None
        return parse_models(body, self.log_tail())

    def stop(self) -> StopResult:
        """SIGTERM to the group, SIGKILL after the grace period; idempotent."""
        if self.process is None:
            return StopResult(None, True, False)
        if self.stop_result is not None:
            return self.stop_result
        killed = False
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                killed = True
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Workers the leader left behind in its group go too.
        _signal_group(self.process.pid, signal.SIGKILL)
        code = self.process.returncode
        if self._copier is not None:
            # The group is gone, so the pipe is at EOF (unless a worker left the group with it).
            self._copier.join(timeout=5)
        self.stop_result = StopResult(code, code in CLEAN_EXIT_CODES and not killed, killed)
        _LIVE.discard(self)
        return self.stop_result

    def __enter__(self) -> ManagedServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_models(body: bytes, log_tail: str = "") -> list[str]:
    """Model ids from an OpenAI /v1/models body, e.g. {"object": "list", "data": [{"id": "tiny"}]}."""
    try:
        data = json.loads(body)
        return [str(m["id"]) for m in data["data"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ServerError(f"GET /v1/models answered garbage: {body[:120]!r}", log_tail) from e


def _copy_redacted(pipe, log, secrets: tuple[str, ...]) -> None:
    """The server's output into its log, whole lines at a time, redacted; until EOF.

    Bytes that are not UTF-8 pass through unchanged (surrogateescape); each line is flushed at
    once so log_tail() sees it while the server starts. If the log cannot be written (disk full)
    the pipe is still drained, so the server never blocks on its output."""
    lines = LineRedactor(secrets)
    writable = True

    def write(text: str) -> None:
        nonlocal writable
        if text and writable:
            try:
                log.write(text.encode("utf-8", "surrogateescape"))
                log.flush()
            except (OSError, ValueError):
                writable = False

    with pipe, log:
        for raw in iter(lambda: pipe.read1(65536), b""):
            write(lines.feed(raw.decode("utf-8", "surrogateescape")))
        write(lines.drain())


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()
