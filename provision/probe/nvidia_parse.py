"""Pure parsers for what NVIDIA's driver says about itself. Each one shows a sample it reads."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from typing import NamedTuple

from provision.probe.text import colon_pairs

BOM = "\ufeff"


@dataclass(frozen=True)
class SmiGpu:
    # A dataclass, not a NamedTuple: a field called `index` would hide tuple.index.
    index: int | None
    name: str
    memory_mb: int | None = None
    compute_capability: str | None = None
    driver_version: str | None = None

    @property
    def name_truncated(self) -> bool:
        # nvidia-smi's table cuts long names to fit its column: "NVIDIA GeForce RTX 2080 ..."
        return self.name.endswith("...")


class DriverHeader(NamedTuple):
    driver_version: str | None
    cuda_version: str | None
    smi_version: str | None = None


_VERSION = r"(\d+(?:\.\d+)+)"


def parse_driver_header(text: str) -> DriverHeader:
    """Driver and CUDA version from the `nvidia-smi` table header or `nvidia-smi --version`.

    Table header, up to R595 and from R610 on (WSL2: NVIDIA-SMI is the Linux shim's
    version, "Driver Version" the Windows driver's, which is the one that counts):

        | NVIDIA-SMI 570.133.20             Driver Version: 570.133.20     CUDA Version: 12.8     |
        | NVIDIA-SMI 610.57.04              KMD Version: 610.57.04     CUDA UMD Version: 13.3     |

    `nvidia-smi --version` (R610 keeps the old keys but says "Deprecated" in them):

        DRIVER version      : 590.48.01
        CUDA Version        : 13.1
        KMD version         : 610.57.04
        CUDA UMD version    : 13.3
    """
    text = text.lstrip(BOM)
    smi = re.search(r"NVIDIA-SMI(?: version)?\s*:?\s*" + _VERSION, text)
    driver = re.search(r"\b(?:Driver|KMD) Version\s*:\s*" + _VERSION, text, re.I)
    cuda = re.search(r"\bCUDA (?:UMD )?Version\s*:\s*(\d+\.\d+)", text, re.I)
    return DriverHeader(
        driver_version=driver.group(1) if driver else None,
        cuda_version=cuda.group(1) if cuda else None,
        smi_version=smi.group(1) if smi else None,
    )


def parse_smi_table(text: str) -> list[SmiGpu]:
    """GPUs from the default `nvidia-smi` table: index, name (maybe cut short) and total memory.

        |=========================================+========================+======================|
        |   0  NVIDIA H100 80GB HBM3          Off |   00000000:AB:00.0 Off |                    0 |
        | N/A   33C    P0             73W /  700W |       0MiB /  81559MiB |      0%      Default |
        |                                         |                        |             Disabled |
        +-----------------------------------------+------------------------+----------------------+

    Only the first table counts: the "MIG devices" and "Processes" tables that follow it
    (after a blank line) have rows that look alike.
    """
    lines = text.lstrip(BOM).splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|=")), None)
    if start is None:
        return []
    gpus: list[SmiGpu] = []
    block: list[str] = []
    for line in [*lines[start + 1 :], ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            gpu = _table_block(block)
            if gpu is not None:
                gpus.append(gpu)
            block = []
        if not line.startswith("+"):  # a blank line ends the GPU table
            break
    return gpus


def _table_block(block: list[str]) -> SmiGpu | None:
    first_cell = block[0].split("|")[1]
    # "  0  NVIDIA GeForce RTX 2080 ...  WDDM  " -> index, name, persistence mode or driver model
    m = re.match(r"\s*(\d+)\s+(.*\S)\s+\S+\s*$", first_cell)
    if not m:
        return None
    memory = None
    for line in block[1:]:
        mem = re.search(r"(\d+)MiB\s*/\s*(\d+)MiB", line)
        if mem:
            memory = int(mem.group(2))
            break
    return SmiGpu(index=int(m.group(1)), name=m.group(2), memory_mb=memory)


# What the probe asks for; the output is CSV with no header and no units, in this order.
QUERY_FIELDS = ("index", "name", "memory.total", "compute_cap", "driver_version")


def parse_query_gpu_csv(text: str, fields: tuple[str, ...] = QUERY_FIELDS) -> list[SmiGpu]:
    """`nvidia-smi --query-gpu=... --format=csv[,noheader][,nounits]`.

    With a header line the columns are found by name (units in brackets dropped), so the
    wide captures with 200+ fields parse too; without one, `fields` gives the order:

        compute_cap, compute_mode, driver_version, name, index
        7.0, Default, 570.86.15, NVIDIA TITAN V, 0

        0, NVIDIA H100 80GB HBM3, 81559, 9.0, 590.48.01
    """
    rows = [r for r in csv.reader(io.StringIO(text.lstrip(BOM)), skipinitialspace=True) if r]
    if not rows:
        return []
    header = [re.sub(r"\s*\[.*\]$", "", h.strip()) for h in rows[0]]
    if "name" in header:
        rows = rows[1:]
    else:
        header = list(fields)
    gpus = []
    for row in rows:
        values = dict(zip(header, (v.strip() for v in row), strict=False))
        name = _known(values.get("name"))
        if not name:
            continue
        gpus.append(
            SmiGpu(
                index=_int(values.get("index")),
                name=name,
                memory_mb=_int(values.get("memory.total")),
                compute_capability=_cc(values.get("compute_cap")),
                driver_version=_known(values.get("driver_version")),
            )
        )
    return gpus


def _known(value: str | None) -> str | None:
    if value is None or value in ("", "N/A", "[N/A]", "[Not Supported]"):
        return None
    return value


def _int(value: str | None) -> int | None:
    value = _known(value)
    m = re.match(r"\d+", value) if value else None  # "81559 MiB" or "81559"
    return int(m.group(0)) if m else None


def _cc(value: str | None) -> str | None:
    value = _known(value)
    return value if value and re.fullmatch(r"\d+\.\d+", value) else None


def parse_proc_driver_version(text: str) -> str | None:
    """Driver version from /proc/driver/nvidia/version (the kernel module's).

        NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.173.02  Tue Jun 23 08:38:17 UTC 2026
        NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  565.57.01  Release Build  (dvs-builder@...

    On a Jetson the number is the L4T release ("35.3.1"), not a desktop driver version;
    see is_l4t_release().
    """
    m = re.search(r"^NVRM version:.*?Kernel Module(?: for \S+)?\s+" + _VERSION, text, re.M)
    return m.group(1) if m else None


def parse_sys_module_version(text: str) -> str | None:
    """/sys/module/nvidia/version holds just the version: `550.144.03`."""
    m = re.fullmatch(r"\s*" + _VERSION + r"\s*", text)
    return m.group(1) if m else None


def is_l4t_release(version: str) -> bool:
    """Jetson kernel modules report the L4T release (35.3.1); desktop drivers are >= 300."""
    return int(version.split(".")[0]) < 100


def cuda_version_from_nvml(value: int) -> str | None:
    """nvmlSystemGetCudaDriverVersion's integer: 12080 -> "12.8", 13010 -> "13.1"."""
    if value <= 0:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def parse_gpu_information(text: str) -> dict[str, str]:
    """/proc/driver/nvidia/gpus/<bus>/information, `Key: <tabs> value` lines
    (proc-driver-nvidia-gpus-information__tesla-k80-colab.txt):

        Model: \t\t Tesla K80
        Bus Location: \t 0000:00:04.0
        Device Minor: \t 0
    """
    return colon_pairs(text)


def is_nvml_unknown_error(text: str) -> bool:
    """nvidia-smi in a container whose device cgroup lost the GPUs
    (nvidia-smi-error__nvml-unknown-error-in-container.txt): `Failed to initialize NVML: Unknown Error`."""
    return "Failed to initialize NVML: Unknown Error" in text
