"""Shared pieces for the probe tests: fixture access, a recorded-command runner, a test System.

Only what this CI box cannot have is faked, at the lowest layer: command output (from
recorded captures), files (a sysfs/procfs tree under tmp_path) and NVML's functions
(with values taken from recorded nvidia-smi outputs).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pynvml

from provision.probe.system import CommandResult, System

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RAW = FIXTURES / "raw"
RECORDED = FIXTURES / "probe"


def raw(name: str) -> str:
    return (RAW / name).read_text(encoding="utf-8")


def recorded(name: str) -> str:
    return (RECORDED / name).read_text(encoding="utf-8")


class RecordedRunner:
    """Answers commands from recorded outputs, keyed by (program name, *args)."""

    def __init__(self, answers: dict[tuple[str, ...], CommandResult | BaseException] | None = None) -> None:
        self.answers = dict(answers or {})
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> CommandResult:
        self.calls.append(list(argv))
        key = (Path(argv[0]).name, *argv[1:])
        answer = self.answers.get(key)
        if answer is None:
            raise FileNotFoundError(f"no recorded output for {key}")
        if isinstance(answer, BaseException):
            raise answer
        return answer


def ok(stdout: str, stderr: str = "") -> CommandResult:
    return CommandResult(0, stdout, stderr)


def failed(stderr: str, returncode: int = 1) -> CommandResult:
    return CommandResult(returncode, "", stderr)


def timed_out(argv: str) -> subprocess.TimeoutExpired:
    return subprocess.TimeoutExpired(argv, 1.0)


def make_system(
    root: Path,
    *,
    system: str = "linux",
    machine: str = "x86_64",
    runner: RecordedRunner | None = None,
    tools: dict[str, Path] | None = None,
    trusted_tools: dict[str, Path] | None = None,
    nvml: Any = None,
    env: dict[str, str] | None = None,
    load_cpuinfo: Callable[[], Any] | None = None,
) -> System:
    """A System reading files under `root`, running `runner`, finding only the given tools."""
    tools = tools or {}
    trusted_tools = trusted_tools or {}
    kwargs: dict[str, Any] = {}
    if load_cpuinfo is not None:
        kwargs["load_cpuinfo"] = load_cpuinfo
    return System(
        system=system,
        machine=machine,
        release="6.1.0-test",
        python_version="3.11.7",
        python_implementation="cpython",
        available_cpus=16,
        glibc_confstr="glibc 2.36" if system == "linux" else None,
        env=env or {},
        root=root,
        run=runner or RecordedRunner(),
        load_nvml=lambda: nvml,
        which_override=tools.get,
        trusted_which_override=trusted_tools.get,
        **kwargs,
    )


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def pci_device(root: Path, address: str, vendor: str, device: str, pci_class: str) -> None:
    """One /sys/bus/pci/devices entry, as the kernel writes it (`0x10de\\n`)."""
    write_tree(
        root,
        {
            f"sys/bus/pci/devices/{address}/vendor": f"{vendor}\n",
            f"sys/bus/pci/devices/{address}/device": f"{device}\n",
            f"sys/bus/pci/devices/{address}/class": f"{pci_class}\n",
        },
    )


class FakeNvml:
    """pynvml's functions over recorded values; errors are pynvml's own NVMLError classes.

    gpus: (name, memory MiB, (cc major, cc minor), mig mode or None for "Not Supported").
    init_error: an NVML return code nvmlInit fails with (e.g. NVML_ERROR_DRIVER_NOT_LOADED).
    """

    NVMLError = pynvml.NVMLError

    def __init__(
        self,
        driver: str,
        cuda: int,
        gpus: list[tuple[str, int, tuple[int, int], int | None]],
        init_error: int | None = None,
    ) -> None:
        self.driver, self.cuda, self.gpus, self.init_error = driver, cuda, gpus, init_error
        self.initialised = False
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def _check(self) -> None:
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check()
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._check()
        return self.cuda

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._check()
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self.gpus[handle][0].encode()  # as pynvml < 11.5 returned it

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        class Memory:
            total = self.gpus[handle][1] * 1024 * 1024

        return Memory()

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return self.gpus[handle][2]

    def nvmlDeviceGetMigMode(self, handle: int) -> tuple[int, int]:
        mode = self.gpus[handle][3]
        if mode is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return (mode, mode)
