"""The probe's view of the known-failure hosts: Rosetta, Jetson, WSL2, NVML errors, vGPU/MIG.

Each source is parsed from its raw sample (tests/fixtures/raw, listed in SOURCES.md); the
detectors read trees under tmp_path and commands answered from those samples. Profiles written
before `platform` existed (schema v1) must still say what they can.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pynvml
import pytest

from provision.errors import ProfileError
from provision.probe import nvidia_parse
from provision.probe.host import probe_host, probe_host_light
from provision.probe.nvidia import probe_nvidia
from provision.probe.pci import display_controllers
from provision.probe.platform import (
    detect_rosetta,
    detect_tegra,
    detect_wsl_lib_dir,
    parse_nv_tegra_release,
    parse_proc_translated,
    wsl_lib_dir_has_driver,
)
from provision.profile import load_profile, profile_from_dict
from tests.support.probe import FakeNvml, RecordedRunner, failed, make_system, ok, pci_device, raw, write_tree

PROFILES = Path(__file__).parent / "profiles" / "classes"
SYSCTL = "/usr/sbin/sysctl"


# ---------------------------------------------------------------- parsers, on the raw samples


def test_proc_translated_sample_says_rosetta():
    assert parse_proc_translated(raw("sysctl-proc-translated__x86_64-python-under-rosetta.txt")) is True
    assert parse_proc_translated("sysctl.proc_translated: 0\n") is False
    # Intel Macs have no such key: not translated, not unknown.
    assert parse_proc_translated("sysctl: unknown oid 'sysctl.proc_translated'") is False
    assert parse_proc_translated("") is None


def test_nv_tegra_release_sample_gives_the_l4t_release():
    assert parse_nv_tegra_release(raw("nv-tegra-release__jetson-l4t-r36.3.0-jetpack6.txt")) == "36.3.0"
    assert (
        parse_nv_tegra_release("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref") == "35.4.1"
    )
    assert parse_nv_tegra_release("TARGET_USERSPACE_LIB_DIR=nvidia\n") is None


def test_wsl_listing_without_nvidia_has_no_libcuda():
    names = raw("ls-usr-lib-wsl-lib__wsl2-no-nvidia-driver.txt").split()
    assert names == ["libd3d12.so", "libd3d12core.so", "libdxcore.so"]
    assert not wsl_lib_dir_has_driver(names)
    assert wsl_lib_dir_has_driver([*names, "libcuda.so.1", "libnvidia-ml.so.1"])


def test_proc_gpu_information_sample_names_the_gpu():
    info = nvidia_parse.parse_gpu_information(raw("proc-driver-nvidia-gpus-information__tesla-k80-colab.txt"))
    assert (info["Model"], info["Bus Location"], info["Device Minor"]) == ("Tesla K80", "0000:00:04.0", "0")
    assert nvidia_parse.is_nvml_unknown_error(raw("nvidia-smi-error__nvml-unknown-error-in-container.txt"))


# ---------------------------------------------------------------- detectors


def test_rosetta_is_detected_on_a_mac(tmp_path):
    runner = RecordedRunner(
        {
            ("sysctl", "sysctl.proc_translated"): ok(
                raw("sysctl-proc-translated__x86_64-python-under-rosetta.txt")
            )
        }
    )
    system = make_system(tmp_path, system="darwin", runner=runner, tools={"sysctl": Path(SYSCTL)})
    found = detect_rosetta(system)
    assert found.value is True
    assert any("Rosetta 2" in n for n in found.notes)
    native = make_system(
        tmp_path,
        system="darwin",
        machine="arm64",
        runner=RecordedRunner({("sysctl", "sysctl.proc_translated"): ok("sysctl.proc_translated: 0\n")}),
        tools={"sysctl": Path(SYSCTL)},
    )
    assert detect_rosetta(native).value is False


def test_jetson_from_nv_tegra_release_then_kernel_then_nvgpu(tmp_path):
    write_tree(tmp_path, {"etc/nv_tegra_release": raw("nv-tegra-release__jetson-l4t-r36.3.0-jetpack6.txt")})
    system = dataclasses.replace(make_system(tmp_path, machine="aarch64"), release="5.15.136-tegra")
    tegra = detect_tegra(system).value
    assert (tegra.l4t, tegra.kernel, tegra.source) == ("36.3.0", "5.15.136-tegra", "nv_tegra_release")

    bare = tmp_path / "container"
    bare.mkdir()
    kernel_only = dataclasses.replace(make_system(bare, machine="aarch64"), release="5.10.120-tegra")
    assert detect_tegra(kernel_only).value.source == "kernel"

    write_tree(bare, {"sys/module/nvgpu/refcnt": "3\n"})
    renamed = dataclasses.replace(make_system(bare, machine="aarch64"), release="5.15.0-custom")
    assert detect_tegra(renamed).value.source == "nvgpu"

    server = tmp_path / "server"
    server.mkdir()
    assert detect_tegra(make_system(server, machine="aarch64")).value is None  # a GH200 is no Jetson


def test_wsl_lib_dir_is_recorded_with_or_without_the_driver(tmp_path):
    assert detect_wsl_lib_dir(make_system(tmp_path)).value is None
    for name in raw("ls-usr-lib-wsl-lib__wsl2-no-nvidia-driver.txt").split():
        write_tree(tmp_path, {f"usr/lib/wsl/lib/{name}": ""})
    found = detect_wsl_lib_dir(make_system(tmp_path))
    assert found.value == "/usr/lib/wsl/lib"
    assert any("no libcuda" in n for n in found.notes)
    write_tree(tmp_path, {"usr/lib/wsl/lib/libcuda.so.1": ""})
    assert detect_wsl_lib_dir(make_system(tmp_path)).notes == ()


def _container_with_broken_nvml(root: Path) -> None:
    """A container whose NVML answers "Unknown Error" while the kernel module's files are there."""
    pci_device(root, "0000:00:04.0", "0x10de", "0x102d", "0x030200")
    write_tree(
        root,
        {
            "proc/driver/nvidia/version": raw(
                "proc-driver-nvidia-version__proprietary-580.173.02-x86_64.txt"
            ),
            "proc/driver/nvidia/gpus/0000:00:04.0/information": raw(
                "proc-driver-nvidia-gpus-information__tesla-k80-colab.txt"
            ),
        },
    )


def test_nvml_unknown_error_is_reported_as_such_and_the_proc_files_answer(tmp_path):
    _container_with_broken_nvml(tmp_path)
    smi_says = raw("nvidia-smi-error__nvml-unknown-error-in-container.txt")
    runner = RecordedRunner({("nvidia-smi",): failed(smi_says, 255)})
    nvml = FakeNvml("0", 0, [], init_error=pynvml.NVML_ERROR_UNKNOWN)
    system = make_system(
        tmp_path, nvml=nvml, runner=runner, trusted_tools={"nvidia-smi": tmp_path / "nvidia-smi"}
    )
    found = probe_nvidia(system, display_controllers(system))
    assert found.value.nvml_error == "Unknown Error"
    assert found.value.driver.driver_version == "580.173.02"
    assert [g.name for g in found.value.gpus] == ["Tesla K80"]  # named by /proc, not "name unknown"
    assert any("NVML error, not a host without a GPU" in n for n in found.notes)


def test_driver_not_loaded_is_no_nvml_error(tmp_path):
    pci_device(tmp_path, "0000:00:04.0", "0x10de", "0x102d", "0x030200")
    nvml = FakeNvml("0", 0, [], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    system = make_system(tmp_path, nvml=nvml)
    found = probe_nvidia(system, display_controllers(system))
    assert nvml.shutdowns == 0 and found.value.driver is None  # NVML was asked, and said "no driver"
    assert found.value.nvml_error is None


def test_vgpu_guest_mode_is_recorded(tmp_path):
    pci_device(tmp_path, "0000:00:04.0", "0x10de", "0x20b0", "0x030200")

    class VgpuNvml(FakeNvml):
        def nvmlDeviceGetVirtualizationMode(self, handle: int) -> int:
            return pynvml.NVML_GPU_VIRTUALIZATION_MODE_VGPU

    nvml = VgpuNvml("535.104.05", 12020, [("GRID A100-40C", 40960, (8, 0), None)])
    system = make_system(tmp_path, nvml=nvml)
    found = probe_nvidia(system, display_controllers(system))
    assert found.value.virtualization == ("vgpu",)
    assert found.value.gpus[0].name == "GRID A100-40C"  # still a GPU, never "no GPU"


def test_probe_host_fills_the_platform_block(tmp_path):
    _container_with_broken_nvml(tmp_path)
    write_tree(tmp_path, {"usr/lib/wsl/lib/libcuda.so.1": "", "proc/cpuinfo": ""})
    nvml = FakeNvml("0", 0, [], init_error=pynvml.NVML_ERROR_UNKNOWN)
    system = make_system(tmp_path, nvml=nvml)
    profile = probe_host(system)
    assert profile.platform.nvml_error == "Unknown Error"
    assert profile.platform.wsl_lib_dir == "/usr/lib/wsl/lib"
    again = profile_from_dict(json.loads(profile.to_json()))
    assert again.platform == profile.platform
    assert profile.to_dict()["schema_version"] == 2


def test_light_probe_reads_kfd_targets_without_commands(tmp_path):
    write_tree(
        tmp_path,
        {
            "sys/class/kfd/kfd/topology/nodes/1/properties": "simd_count 80\ngfx_target_version 100301\n",
        },
    )
    runner = RecordedRunner()
    profile = probe_host_light(make_system(tmp_path, runner=runner))
    assert [g.gfx for g in profile.amd_gpus] == ["gfx1031"]
    assert runner.calls == []


# ---------------------------------------------------------------- old profiles


def test_v1_profiles_still_load_and_infer_what_they_can():
    rosetta = load_profile(PROFILES / "macos-m1pro-rosetta-v1.json")
    assert rosetta.schema_version == 2 and rosetta.platform.translated is None
    assert rosetta.rosetta  # Apple M1 Pro under an x86_64 interpreter
    assert not load_profile(PROFILES.parent / "macos-intel-i5.json").rosetta  # a real Intel Mac
    jetson = load_profile(PROFILES / "linux-jetson-agx-orin-v1-kernel-only.json").jetson
    assert (jetson.l4t, jetson.kernel, jetson.source) == (None, "5.15.136-tegra", "kernel")
    assert load_profile(PROFILES.parent / "linux-gh200-aarch64-driver590.json").jetson is None
    assert load_profile(PROFILES / "linux-wsl2-rtx3070-driver531.json").wsl


@pytest.mark.parametrize(
    "platform, message",
    [
        ({"translated": "yes"}, "platform.translated"),
        ({"tegra": {"l4t": "R36"}}, "platform.tegra.l4t"),
        ({"gpu_virtualization": ["sriov"]}, "platform.gpu_virtualization"),
        ([], "'platform' must be an object"),
    ],
)
def test_bad_platform_block_is_a_one_line_error(platform, message):
    d = json.loads((PROFILES / "linux-wsl2-rtx3070-driver531.json").read_text())
    d["platform"] = platform
    with pytest.raises(ProfileError, match=message):
        profile_from_dict(d)


def test_unknown_schema_version_is_refused():
    d = json.loads((PROFILES / "linux-wsl2-rtx3070-driver531.json").read_text())
    d["schema_version"] = 3
    with pytest.raises(ProfileError, match="expected one of 1, 2"):
        profile_from_dict(d)
