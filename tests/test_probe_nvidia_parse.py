"""nvidia-smi, NVML and kernel-module parsers against every recorded NVIDIA output in fixtures/raw."""

from __future__ import annotations

import csv
import io

import pytest

from provision.probe import nvidia_parse as p
from tests.support.probe import RAW, raw

# file -> (GPU count, first GPU's name as printed, its total MiB, driver, CUDA)
TABLES = {
    "nvidia-smi__2x-h100-80gb-hbm3-driver570.133-cuda12.8.txt": (
        2,
        "NVIDIA H100 80GB HBM3",
        81559,
        "570.133.20",
        "12.8",
    ),
    "nvidia-smi__4x-gh200-aarch64-driver590.48-cuda13.1.txt": (
        4,
        "NVIDIA GH200 120GB",
        97871,
        "590.48.01",
        "13.1",
    ),
    "nvidia-smi__8x-a100-sxm4-40gb-driver450.102-cuda11.0.txt": (
        8,
        "A100-SXM4-40GB",
        40537,
        "450.102.04",
        "11.0",
    ),
    "nvidia-smi__8x-h200-driver570.133-cuda12.8.txt": (8, "NVIDIA H200", 143771, "570.133.20", "12.8"),
    "nvidia-smi__h100-80gb-mig-enabled-driver590.48-cuda13.1.txt": (
        1,
        "NVIDIA H100 80GB HBM3",
        81559,
        "590.48.01",
        "13.1",
    ),
    "nvidia-smi__l40s-driver580.126-cuda13.0.txt": (1, "NVIDIA L40S", 46068, "580.126.09", "13.0"),
    "nvidia-smi__rtx-pro-6000-blackwell-truncated-name-driver595.58-cuda13.2.txt": (
        1,
        "NVIDIA RTX PRO 6000 Blac...",
        97887,
        "595.58.03",
        "13.2",
    ),
    "nvidia-smi__rtx2080super-linux-driver610.57-kmd-cudaumd13.3.txt": (
        1,
        "NVIDIA GeForce RTX 2080 ...",
        8192,
        "610.57.04",
        "13.3",
    ),
    "nvidia-smi__rtx3090-driver535.161-cuda12.2.txt": (
        1,
        "NVIDIA GeForce RTX 3090",
        24576,
        "535.161.07",
        "12.2",
    ),
    "nvidia-smi__tesla-p4-pascal-driver580.65-cuda13.0.txt": (1, "Tesla P4", 7680, "580.65.06", "13.0"),
    "nvidia-smi__titan-v-volta-driver515.65-cuda11.7-no-timestamp.txt": (
        1,
        "NVIDIA TITAN V",
        12288,
        "515.65.01",
        "11.7",
    ),
    "nvidia-smi__titan-xp-pascal-driver450.57-cuda11.0-no-processes.txt": (
        1,
        "TITAN Xp",
        12196,
        "450.57",
        "11.0",
    ),
    "nvidia-smi__windows-rtx2080super-wddm-driver610.62-kmd-cudaumd13.3.txt": (
        1,
        "NVIDIA GeForce RTX 2080 ...",
        8192,
        "610.62",
        "13.3",
    ),
    "nvidia-smi__windows-rtx5060-wddm-driver576.88-cuda12.9.txt": (
        1,
        "NVIDIA GeForce RTX 5060",
        8151,
        "576.88",
        "12.9",
    ),
    "nvidia-smi__wsl2-rtx3070-smi530.47-driver531.68-cuda12.1.txt": (
        1,
        "NVIDIA GeForce RTX 3070",
        8192,
        "531.68",
        "12.1",
    ),
}


def test_every_table_fixture_is_covered():
    assert {f.name for f in RAW.glob("nvidia-smi__*.txt")} == set(TABLES)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_smi_table(name):
    count, first_name, memory, driver, cuda = TABLES[name]
    text = raw(name)
    gpus = p.parse_smi_table(text)
    assert len(gpus) == count
    assert [g.index for g in gpus] == list(range(count))
    assert gpus[0].name == first_name
    assert all(g.memory_mb == memory for g in gpus)
    assert gpus[0].name_truncated == first_name.endswith("...")
    header = p.parse_driver_header(text)
    assert (header.driver_version, header.cuda_version) == (driver, cuda)


def test_table_with_bom_starts_cleanly():
    text = raw("nvidia-smi__windows-rtx5060-wddm-driver576.88-cuda12.9.txt")
    assert text.startswith(p.BOM)
    assert p.parse_driver_header(text).smi_version == "576.88"


def test_wsl2_driver_is_the_windows_driver_not_the_smi_version():
    header = p.parse_driver_header(raw("nvidia-smi__wsl2-rtx3070-smi530.47-driver531.68-cuda12.1.txt"))
    assert header.smi_version == "530.47"
    assert header.driver_version == "531.68"


def test_mig_rows_are_not_gpus():
    text = raw("nvidia-smi__h100-80gb-mig-enabled-driver590.48-cuda13.1.txt")
    assert "MIG devices:" in text
    assert len(p.parse_smi_table(text)) == 1


def test_smi_version_output():
    h100 = p.parse_driver_header(raw("nvidia-smi-version__h100-driver590.48-cuda13.1.txt"))
    assert (h100.driver_version, h100.cuda_version, h100.smi_version) == ("590.48.01", "13.1", "590.48.01")
    # R610: "DRIVER version : Deprecated, see ..." must not hide the KMD / CUDA UMD lines.
    r610 = p.parse_driver_header(raw("nvidia-smi-version__rtx2080super-driver610.57-kmd-deprecations.txt"))
    assert (r610.driver_version, r610.cuda_version) == ("610.57.04", "13.3")


def test_header_of_unrelated_text_is_empty():
    assert p.parse_driver_header(
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    ) == (p.DriverHeader(None, None, None))


CSVS = {
    "nvidia-smi-query-gpu-csv__h100-80gb-driver590.48-wide-212-fields.txt": [
        ("NVIDIA H100 80GB HBM3", 0, 81559, "9.0", "590.48.01")
    ],
    "nvidia-smi-query-gpu-csv__rtx2080super-linux-driver610.57-wide-241-fields.txt": [
        ("NVIDIA GeForce RTX 2080 SUPER", 0, 8192, "7.5", "610.57.04")
    ],
    "nvidia-smi-query-gpu-csv__windows-rtx2080super-driver610.62-wide-239-fields.txt": [
        ("NVIDIA GeForce RTX 2080 SUPER", 0, 8192, "7.5", "610.62")
    ],
    "nvidia-smi-query-gpu-csv__titan-v-plus-rtx5880-ada-driver570.86.txt": [
        ("NVIDIA TITAN V", 0, None, "7.0", "570.86.15"),
        ("NVIDIA RTX 5880 Ada Generation", 1, None, "8.9", "570.86.15"),
    ],
}


@pytest.mark.parametrize("name", sorted(CSVS))
def test_query_gpu_csv_with_header(name):
    gpus = p.parse_query_gpu_csv(raw(name))
    assert [(g.name, g.index, g.memory_mb, g.compute_capability, g.driver_version) for g in gpus] == CSVS[
        name
    ]


def test_wide_csv_rows_match_their_header():
    # No quoting in nvidia-smi's CSV: a value with a comma would shift every column after it.
    for name in CSVS:
        rows = list(csv.reader(io.StringIO(raw(name))))
        assert all(len(r) == len(rows[0]) for r in rows), name


def test_query_gpu_csv_as_the_probe_asks_for_it():
    # --format=csv,noheader,nounits with QUERY_FIELDS; the values are the recorded H100 row's.
    text = (
        "0, NVIDIA H100 80GB HBM3, 81559, 9.0, 590.48.01\n1, NVIDIA H100 80GB HBM3, 81559, [N/A], 590.48.01\n"
    )
    gpus = p.parse_query_gpu_csv(text)
    assert [(g.index, g.memory_mb, g.compute_capability) for g in gpus] == [
        (0, 81559, "9.0"),
        (1, 81559, None),
    ]


def test_query_gpu_csv_empty():
    assert p.parse_query_gpu_csv("") == []


PROC = {
    "proc-driver-nvidia-version__open-kmod-565.57.01-x86_64-ubuntu24.04.txt": "565.57.01",
    "proc-driver-nvidia-version__open-kmod-525.60.11-x86_64-arch.txt": "525.60.11",
    "proc-driver-nvidia-version__proprietary-580.173.02-x86_64.txt": "580.173.02",
    "proc-driver-nvidia-version__jetson-orin-nx-aarch64-l4t35.3.1.txt": "35.3.1",
}


@pytest.mark.parametrize("name", sorted(PROC))
def test_proc_driver_version(name):
    version = p.parse_proc_driver_version(raw(name))
    assert version == PROC[name]
    assert p.is_l4t_release(version) == ("jetson" in name)


def test_sys_module_version():
    assert p.parse_sys_module_version("550.144.03\n") == "550.144.03"
    assert p.parse_sys_module_version("garbage\n") is None


@pytest.mark.parametrize(
    ("value", "expected"), [(12080, "12.8"), (13010, "13.1"), (11000, "11.0"), (0, None)]
)
def test_cuda_version_from_nvml(value, expected):
    assert p.cuda_version_from_nvml(value) == expected
