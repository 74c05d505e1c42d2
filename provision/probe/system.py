"""The layers the probe reads the machine through, gathered so tests can replace them.

Everything the probe learns comes through a `System`: files under `root` (so a test can
build a sysfs/procfs tree in a tmp dir), environment variables, commands run through
`run`, executables found by `which` / `trusted_which`, and the NVML and py-cpuinfo
modules from their loaders. `System.current()` is the real machine.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

# Where a GPU vendor's own tools live. nvidia-smi and the ROCm tools are looked up only
# here, never on a relative PATH entry or in the working directory: a probe must not run
# whatever a cloned repository happens to name `nvidia-smi`.
TRUSTED_DIRS_POSIX = (
    "/usr/bin",
    "/usr/local/bin",
    "/usr/sbin",
    "/bin",
    "/usr/lib/wsl/lib",  # WSL2: the Windows driver's nvidia-smi is mapped here
    "/opt/rocm/bin",
    "/usr/local/nvidia/bin",  # NVIDIA container toolkit mounts the driver's tools here
    "/opt/nvidia/bin",
)
TRUSTED_DIRS_WINDOWS = (
    r"C:\Windows\System32",
    r"C:\Program Files\NVIDIA Corporation\NVSMI",
)

COMMAND_TIMEOUT_S = 5.0


class CommandResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


Runner = Callable[[Sequence[str], float], CommandResult]


def run_command(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT_S) -> CommandResult:
    """Run argv (never a shell string). Raises OSError / subprocess.TimeoutExpired.

    The command gets its own process group, and a timeout kills the whole group: a wrapper
    script's child would otherwise keep our pipes open and the wait would never end.
    """
    posix = os.name == "posix"
    with subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=posix,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            if posix:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.communicate()
            raise
    return CommandResult(proc.returncode, stdout, stderr)


def find_executable(name: str, dirs: Iterable[str], windows: bool) -> Path | None:
    """The first `name` in dirs that is an executable file. Relative dirs are skipped."""
    names = [name + ext for ext in (".exe", ".bat", ".cmd")] if windows else [name]
    for d in dirs:
        if not d or not os.path.isabs(d):
            continue
        for n in names:
            p = Path(d) / n
            if p.is_file() and os.access(p, os.X_OK):
                return p
    return None


def _path_dirs(env: Mapping[str, str]) -> list[str]:
    return [d for d in env.get("PATH", "").split(os.pathsep) if d]


def _load_nvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    module: ModuleType = pynvml
    return module


def _load_cpuinfo() -> ModuleType | None:
    try:
        import cpuinfo
    except ImportError:
        return None
    module: ModuleType = cpuinfo
    return module


def _available_cpus() -> int | None:
    if hasattr(os, "sched_getaffinity"):
        try:
            return len(os.sched_getaffinity(0))
        except OSError:
            pass
    return os.cpu_count()


def _glibc_confstr() -> str | None:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"
    except (AttributeError, ValueError, OSError):
        return None


@dataclass
class System:
    system: str  # linux, darwin, windows (lower-case platform.system())
    machine: str
    release: str | None
    python_version: str
    python_implementation: str
    available_cpus: int | None
    glibc_confstr: str | None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    root: Path = Path("/")
    run: Runner = run_command
    load_nvml: Callable[[], Any] = _load_nvml
    load_cpuinfo: Callable[[], Any] = _load_cpuinfo
    # Overrides for executable lookup; None means "search PATH / the trusted dirs".
    which_override: Callable[[str], Path | None] | None = None
    trusted_which_override: Callable[[str], Path | None] | None = None

    @classmethod
    def current(cls) -> System:
        return cls(
            system=platform.system().lower(),
            machine=platform.machine(),
            release=platform.release() or None,
            python_version=platform.python_version(),
            python_implementation=sys.implementation.name,
            available_cpus=_available_cpus(),
            glibc_confstr=_glibc_confstr(),
        )

    @property
    def is_windows(self) -> bool:
        return self.system == "windows"

    def path(self, absolute: str) -> Path:
        """A system path such as /proc/cpuinfo, under this System's root."""
        return self.root / absolute.lstrip("/")

    def read_text(self, absolute: str) -> str | None:
        """The file's text, or None when it is absent or unreadable."""
        try:
            return self.path(absolute).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def which(self, name: str, extra_dirs: Sequence[str] = ()) -> Path | None:
        """A tool on PATH (absolute entries only) or in extra_dirs."""
        if self.which_override is not None:
            return self.which_override(name)
        return find_executable(name, [*_path_dirs(self.env), *extra_dirs], self.is_windows)

    def trusted_which(self, name: str) -> Path | None:
        """A vendor tool from the fixed system directories only (see TRUSTED_DIRS_*)."""
        if self.trusted_which_override is not None:
            return self.trusted_which_override(name)
        if self.is_windows:
            return find_executable(name, TRUSTED_DIRS_WINDOWS, windows=True)
        return find_executable(name, TRUSTED_DIRS_POSIX, windows=False)
