"""NVIDIA detection order: NVML, then nvidia-smi, then the kernel module's files, then bare PCI.

NVML is faked at the pynvml-function layer and nvidia-smi at its output, both with values
recorded on real machines (fixtures/raw); sysfs/procfs are trees under tmp_path.
"""

from __future__ import annotations

import os
import stat

import pynvml
import pytest

from provision.errors import UserError
from provision.probe import nvidia_parse
from provision.probe.nvidia import ENV_CUDA_ARCH, ENV_CUDA_DRIVER_VERSION, probe_nvidia
from provision.probe.pci import display_controllers
from provision.probe.system import find_executable
from tests.support.probe import (
    FakeNvml,
    RecordedRunner,
    failed,
    make_system,
    ok,
    pci_device,
    raw,
    timed_out,
    write_tree,
)

SMI = "/usr/bin/nvidia-smi"
QUERY_ARGS = (f"--query-gpu={','.join(nvidia_parse.QUERY_FIELDS)}", "--format=csv,noheader,nounits")
NOT_COMMUNICATING = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)


def h100_box(tmp_path, count=2):
    """PCI devices of an H100 host (device id 0x2330, from the recorded CSV's pci.device_id)."""
    for i in range(count):
        pci_device(tmp_path, f"0000:{0xAB + i:02x}:00.0", "0x10de", "0x2330", "0x030200")


def recorded_h100_nvml(mig=None, **kw):
    """NVML as the recorded 2x H100 box answers: table header for driver/CUDA, CSV for compute capability."""
    table = raw("nvidia-smi__2x-h100-80gb-hbm3-driver570.133-cuda12.8.txt")
    header = nvidia_parse.parse_driver_header(table)
    cc = nvidia_parse.parse_query_gpu_csv(
        raw("nvidia-smi-query-gpu-csv__h100-80gb-driver590.48-wide-212-fields.txt")
    )
    major, minor = cc[0].compute_capability.split(".")
    cuda_major, cuda_minor = header.cuda_version.split(".")
    gpus = [(g.name, g.memory_mb, (int(major), int(minor)), mig) for g in nvidia_parse.parse_smi_table(table)]
    return FakeNvml(header.driver_version, int(cuda_major) * 1000 + int(cuda_minor) * 10, gpus, **kw)


def smi_query_output(csv_fixture: str) -> str:
    """What `nvidia-smi --query-gpu=<QUERY_FIELDS> --format=csv,noheader,nounits` prints on the
    recorded machine: its recorded CSV row, re-emitted in the probe's field order."""
    rows = nvidia_parse.parse_query_gpu_csv(raw(csv_fixture))
    return "".join(
        f"{g.index}, {g.name}, {g.memory_mb}, {g.compute_capability}, {g.driver_version}\n" for g in rows
    )


def test_nvml_gives_everything(tmp_path):
    h100_box(tmp_path)
    nvml = recorded_h100_nvml()
    system = make_system(tmp_path, nvml=nvml)
    found = probe_nvidia(system, display_controllers(system))
    gpus, driver = found.value.gpus, found.value.driver
    assert [(g.vendor, g.name, g.memory_mb, g.compute_capability, g.index) for g in gpus] == [
        ("nvidia", "NVIDIA H100 80GB HBM3", 81559, "9.0", 0),
        ("nvidia", "NVIDIA H100 80GB HBM3", 81559, "9.0", 1),
    ]
    assert (driver.driver_version, driver.cuda_driver_version, driver.source) == (
        "570.133.20",
        "12.8",
        "nvml",
    )
    assert found.notes == ()
    assert nvml.shutdowns == 1


def test_nvml_reports_mig(tmp_path):
    h100_box(tmp_path)
    system = make_system(tmp_path, nvml=recorded_h100_nvml(mig=1))
    found = probe_nvidia(system, display_controllers(system))
    assert len(found.value.gpus) == 2  # NVML lists physical GPUs, not MIG slices
    assert any("GPU 0 (NVIDIA H100 80GB HBM3) has MIG enabled" in n for n in found.notes)


def test_driver_not_loaded_lists_the_pci_gpus_with_a_note(tmp_path):
    h100_box(tmp_path)
    nvml = recorded_h100_nvml(init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    runner = RecordedRunner(
        {
            ("nvidia-smi", *QUERY_ARGS): failed(NOT_COMMUNICATING, 9),
            ("nvidia-smi",): failed(NOT_COMMUNICATING, 9),
        }
    )
    system = make_system(tmp_path, nvml=nvml, runner=runner, trusted_tools={"nvidia-smi": tmp_path / SMI})
    found = probe_nvidia(system, display_controllers(system))
    assert found.value.driver is None
    assert len(found.value.gpus) == 2
    assert all(
        g.vendor == "nvidia" and "name unknown" in g.name and g.compute_capability is None
        for g in found.value.gpus
    )
    assert "0000:ab:00.0" in found.value.gpus[0].name
    notes = " | ".join(found.notes)
    assert "NVML did not answer (Driver Not Loaded)" in notes
    assert "nvidia-smi did not answer" in notes
    assert "2 NVIDIA GPU(s) on the PCI bus but no driver answers" in notes


def test_nvidia_smi_when_nvml_library_is_missing(tmp_path):
    runner = RecordedRunner(
        {
            ("nvidia-smi", *QUERY_ARGS): ok(
                smi_query_output("nvidia-smi-query-gpu-csv__h100-80gb-driver590.48-wide-212-fields.txt")
            ),
            ("nvidia-smi",): ok(raw("nvidia-smi__h100-80gb-mig-enabled-driver590.48-cuda13.1.txt")),
        }
    )
    nvml = recorded_h100_nvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    system = make_system(tmp_path, nvml=nvml, runner=runner, trusted_tools={"nvidia-smi": tmp_path / SMI})
    found = probe_nvidia(system, [])
    (gpu,) = found.value.gpus
    assert (gpu.name, gpu.memory_mb, gpu.compute_capability, gpu.index) == (
        "NVIDIA H100 80GB HBM3",
        81559,
        "9.0",
        0,
    )
    driver = found.value.driver
    assert (driver.driver_version, driver.cuda_driver_version, driver.source) == (
        "590.48.01",
        "13.1",
        "nvidia-smi",
    )
    assert any("NVML Shared Library Not Found" in n for n in found.notes)
    assert any("MIG is enabled" in n for n in found.notes)


def test_old_driver_without_compute_cap_falls_back_to_the_table(tmp_path):
    runner = RecordedRunner(
        {
            ("nvidia-smi", *QUERY_ARGS): failed('Field "compute_cap" is not a valid field to query.', 2),
            ("nvidia-smi",): ok(raw("nvidia-smi__8x-a100-sxm4-40gb-driver450.102-cuda11.0.txt")),
        }
    )
    system = make_system(tmp_path, runner=runner, trusted_tools={"nvidia-smi": tmp_path / SMI})
    found = probe_nvidia(system, [])
    assert [g.name for g in found.value.gpus] == ["A100-SXM4-40GB"] * 8
    assert all(g.compute_capability is None and g.memory_mb == 40537 for g in found.value.gpus)
    assert found.value.driver.cuda_driver_version == "11.0"
    assert any("compute capability unknown" in n for n in found.notes)


def test_truncated_names_are_noted(tmp_path):
    runner = RecordedRunner(
        {
            ("nvidia-smi", *QUERY_ARGS): failed('Field "compute_cap" is not a valid field to query.', 2),
            ("nvidia-smi",): ok(
                raw("nvidia-smi__rtx-pro-6000-blackwell-truncated-name-driver595.58-cuda13.2.txt")
            ),
        }
    )
    system = make_system(tmp_path, runner=runner, trusted_tools={"nvidia-smi": tmp_path / SMI})
    found = probe_nvidia(system, [])
    assert any("cut short" in n and "Blac..." in n for n in found.notes)


def test_hanging_nvidia_smi_becomes_a_note_and_the_kernel_module_answers(tmp_path):
    h100_box(tmp_path, count=1)
    write_tree(
        tmp_path,
        {"proc/driver/nvidia/version": raw("proc-driver-nvidia-version__proprietary-580.173.02-x86_64.txt")},
    )
    runner = RecordedRunner(
        {("nvidia-smi", *QUERY_ARGS): timed_out("nvidia-smi"), ("nvidia-smi",): timed_out("nvidia-smi")}
    )
    nvml = recorded_h100_nvml(init_error=pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)
    system = make_system(tmp_path, nvml=nvml, runner=runner, trusted_tools={"nvidia-smi": tmp_path / SMI})
    found = probe_nvidia(system, display_controllers(system))
    driver = found.value.driver
    assert (driver.driver_version, driver.cuda_driver_version, driver.source) == ("580.173.02", None, "proc")
    assert len(found.value.gpus) == 1
    notes = " | ".join(found.notes)
    assert "RM has detected an NVML/RM version mismatch" in notes
    assert "timed out" in notes
    assert "not the CUDA version it supports" in notes


def test_sys_module_version_is_read_before_proc(tmp_path):
    write_tree(
        tmp_path,
        {
            "sys/module/nvidia/version": "565.57.01\n",
            "proc/driver/nvidia/version": raw(
                "proc-driver-nvidia-version__proprietary-580.173.02-x86_64.txt"
            ),
        },
    )
    found = probe_nvidia(make_system(tmp_path), [])
    assert (found.value.driver.driver_version, found.value.driver.source) == ("565.57.01", "sysfs")


def test_jetson_kernel_module_is_not_taken_for_a_driver_version(tmp_path):
    write_tree(
        tmp_path,
        {
            "proc/driver/nvidia/version": raw(
                "proc-driver-nvidia-version__jetson-orin-nx-aarch64-l4t35.3.1.txt"
            )
        },
    )
    found = probe_nvidia(make_system(tmp_path, machine="aarch64"), [])
    assert found.value.driver is None
    assert any("L4T release 35.3.1" in n for n in found.notes)


def test_driver_override_keeps_the_probed_gpus(tmp_path):
    """It used to drop them, turning a GPU plan into "no GPU"."""
    h100_box(tmp_path)
    system = make_system(tmp_path, nvml=recorded_h100_nvml(), env={ENV_CUDA_DRIVER_VERSION: "580.65.06"})
    found = probe_nvidia(system, display_controllers(system))
    assert (found.value.driver.driver_version, found.value.driver.source) == ("580.65.06", "env")
    assert [g.compute_capability for g in found.value.gpus] == ["9.0", "9.0"]
    assert any("580.65.06 from" in n and "probed: 570.133" in n for n in found.notes)


def test_both_overrides_plan_a_gpu_less_build_without_probing(tmp_path):
    runner = RecordedRunner()
    system = make_system(
        tmp_path,
        runner=runner,
        env={ENV_CUDA_DRIVER_VERSION: "580.65.06", ENV_CUDA_ARCH: "8.0, sm_90,12.0"},
        trusted_tools={"nvidia-smi": tmp_path / SMI},
    )
    system.load_nvml = lambda: pytest.fail("nothing to probe when both overrides are given")
    found = probe_nvidia(system, display_controllers(system))
    assert [g.sm for g in found.value.gpus] == [80, 90, 120]
    assert found.value.driver.driver_version == "580.65.06"
    assert runner.calls == []


@pytest.mark.parametrize("value", ["ampere", "8", "2.0", "8.0,", "sm_9a"])
def test_bad_arch_override_is_a_user_error(tmp_path, value):
    if value == "8.0,":  # a trailing comma is harmless
        assert (
            len(
                probe_nvidia(
                    make_system(tmp_path, env={ENV_CUDA_ARCH: value, ENV_CUDA_DRIVER_VERSION: "580.1"}), []
                ).value.gpus
            )
            == 1
        )
        return
    with pytest.raises(UserError, match=ENV_CUDA_ARCH):
        probe_nvidia(make_system(tmp_path, env={ENV_CUDA_ARCH: value}), [])


@pytest.mark.parametrize("value", ["latest", "12", "35.3.1", "580.65.06; rm -rf /"])
def test_bad_env_override_is_a_user_error(tmp_path, value):
    with pytest.raises(UserError, match=ENV_CUDA_DRIVER_VERSION):
        probe_nvidia(make_system(tmp_path, env={ENV_CUDA_DRIVER_VERSION: value}), [])


def test_no_evidence_of_a_driver_skips_nvml(tmp_path):
    pci_device(tmp_path, "0000:00:02.0", "0x8086", "0x46a6", "0x030000")  # an Intel iGPU only
    system = make_system(tmp_path)
    system.load_nvml = lambda: pytest.fail("NVML must not be imported without a sign of an NVIDIA driver")
    found = probe_nvidia(system, display_controllers(system))
    assert found.value.gpus == () and found.value.driver is None and found.notes == ()


def test_wsl_device_node_is_evidence(tmp_path):
    write_tree(tmp_path, {"dev/dxg": ""})
    nvml = recorded_h100_nvml()
    found = probe_nvidia(make_system(tmp_path, nvml=nvml), [])
    assert len(found.value.gpus) == 2


def test_pci_scan_keeps_display_and_3d_controllers_only(tmp_path):
    pci_device(tmp_path, "0000:01:00.0", "0x10de", "0x2204", "0x030000")  # VGA
    pci_device(tmp_path, "0000:02:00.0", "0x10de", "0x2330", "0x030200")  # 3D controller
    pci_device(tmp_path, "0000:01:00.1", "0x10de", "0x1aef", "0x040300")  # the GPU's HDMI audio
    found = display_controllers(make_system(tmp_path))
    assert [(d.address, d.device) for d in found] == [("0000:01:00.0", 0x2204), ("0000:02:00.0", 0x2330)]


def test_vendor_tools_are_found_only_in_absolute_directories(tmp_path, monkeypatch):
    planted = tmp_path / "nvidia-smi"
    planted.write_text("#!/bin/sh\necho planted\n")
    planted.chmod(planted.stat().st_mode | stat.S_IEXEC)
    monkeypatch.chdir(tmp_path)
    assert find_executable("nvidia-smi", [".", "", "bin"], windows=False) is None
    assert find_executable("nvidia-smi", [str(tmp_path)], windows=False) == planted
    assert os.path.isabs(str(find_executable("nvidia-smi", [str(tmp_path)], windows=False)))
