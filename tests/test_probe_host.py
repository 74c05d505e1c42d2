"""probe_host end to end: the real CLI on this machine, and whole simulated machines through System."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pynvml
import pytest

from provision.probe import probe_host
from provision.profile import profile_from_dict
from tests.support.probe import (
    FakeNvml,
    RecordedRunner,
    make_system,
    ok,
    pci_device,
    raw,
    recorded,
    write_tree,
)


def run_cli(*args: str, env: dict[str, str] | None = None, python_flags: tuple[str, ...] = ()):
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "provision", "probe", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def roundtrip(profile):
    again = profile_from_dict(json.loads(profile.to_json()))
    assert again == profile
    return again


def test_cli_json_on_this_machine_validates_against_v1():
    out = run_cli("--json")
    assert out.returncode == 0, out.stderr
    profile = profile_from_dict(json.loads(out.stdout))
    assert profile.os.system == {"linux": "linux", "darwin": "darwin", "win32": "windows"}[sys.platform]
    assert profile.python.version.startswith(f"{sys.version_info.major}.{sys.version_info.minor}.")
    assert profile.cpu.cores == (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    assert profile.memory_mb and profile.memory_mb > 0
    assert profile.cpu.flags, "py-cpuinfo found no CPU flags"
    # Toolchain answers agree with what is on PATH here.
    for field, tool in (("cmake", "cmake"), ("ninja", "ninja"), ("ccache", "ccache"), ("nvcc", "nvcc")):
        assert (getattr(profile.toolchain, field) is not None) == (shutil.which(tool) is not None), field
    if profile.toolchain.nvcc:
        assert profile.toolchain.cuda_cublas is not None


def test_cli_imports_no_engine():
    out = run_cli("--json", python_flags=("-X", "importtime"))
    assert out.returncode == 0
    imported = {line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert "cpuinfo" in imported and "provision" in imported  # the trace covers the probe itself
    assert not imported & {"torch", "transformers", "numpy", "vllm", "llama_cpp"}


def test_cli_table():
    out = run_cli()
    assert out.returncode == 0, out.stderr
    for label in ("OS", "Python", "CPU", "Memory", "GPU", "NVIDIA driver", "ROCm", "cmake", "nvcc"):
        assert any(line.startswith(label) for line in out.stdout.splitlines()), label


def test_cli_help_documents_the_overrides():
    out = run_cli("--help")
    assert out.returncode == 0
    for var in (
        "XINFER_SETUP_CUDA_DRIVER_VERSION",
        "XINFER_SETUP_AMD_GPU_ARCHITECTURE",
        "XINFER_SETUP_NO_GPU",
    ):
        assert var in out.stdout


@pytest.mark.parametrize(
    ("var", "value"),
    [("XINFER_SETUP_CUDA_DRIVER_VERSION", "newest"), ("XINFER_SETUP_AMD_GPU_ARCHITECTURE", "mi300x")],
)
def test_cli_bad_override_is_one_line_exit_2(var, value):
    out = run_cli("--json", env={var: value})
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1
    assert var in out.stderr and "Traceback" not in out.stderr


def test_cli_env_overrides():
    out = run_cli(
        "--json",
        env={"XINFER_SETUP_CUDA_DRIVER_VERSION": "580.65.06", "XINFER_SETUP_AMD_GPU_ARCHITECTURE": "gfx942"},
    )
    profile = profile_from_dict(json.loads(out.stdout))
    assert (profile.nvidia.driver_version, profile.nvidia.source) == ("580.65.06", "env")
    assert [g.gfx for g in profile.amd_gpus] == ["gfx942"]


def test_cli_no_gpu():
    out = run_cli("--json", env={"XINFER_SETUP_NO_GPU": "1", "XINFER_SETUP_CUDA_DRIVER_VERSION": "580.65.06"})
    profile = profile_from_dict(json.loads(out.stdout))
    assert profile.gpus == () and profile.nvidia is None and profile.rocm is None
    assert any("XINFER_SETUP_NO_GPU" in n for n in profile.notes)


def test_a_machine_with_nothing(tmp_path):
    profile = roundtrip(probe_host(make_system(tmp_path, load_cpuinfo=lambda: None)))
    assert profile.gpus == () and profile.nvidia is None and profile.rocm is None
    assert profile.memory_mb is None
    assert profile.toolchain.cmake is None
    assert profile.notes  # it says what it could not find


def test_a_source_that_crashes_becomes_a_note(tmp_path):
    def broken_cpuinfo():
        raise RuntimeError("simulated crash inside a source")

    profile = probe_host(make_system(tmp_path, load_cpuinfo=broken_cpuinfo))
    assert profile.cpu.cores == 16
    assert any(n.startswith("cpu: probe failed (RuntimeError: simulated crash") for n in profile.notes)


def test_an_h100_box(tmp_path):
    """A recorded 2x H100 host: NVML values from its nvidia-smi capture, sysfs, CUDA 12.8 toolkit."""
    for i in range(2):
        pci_device(tmp_path, f"0000:{0xAB + i * 15:02x}:00.0", "0x10de", "0x2330", "0x030200")
    write_tree(
        tmp_path,
        {
            "proc/cpuinfo": raw("proc-cpuinfo__x86_64-xeon-platinum-8480plus-sapphirerapids-avx512-amx.txt"),
            "proc/meminfo": recorded("proc-meminfo__24gib-debian12.txt"),
            "proc/driver/nvidia/version": raw(
                "proc-driver-nvidia-version__open-kmod-565.57.01-x86_64-ubuntu24.04.txt"
            ),
            "usr/local/cuda/include/cuda_runtime.h": "",
            "usr/local/cuda/include/cublas_v2.h": "",
            "usr/local/cuda/lib64/libcublas.so.12": "",
            "usr/local/cuda/bin/nvcc": "",
        },
    )
    nvml = FakeNvml("570.133.20", 12080, [("NVIDIA H100 80GB HBM3", 81559, (9, 0), None)] * 2)
    runner = RecordedRunner(
        {
            ("nvcc", "--version"): ok(raw("nvcc-version__cuda12.5.82-wsl2.txt")),
            ("cc", "--version"): ok(recorded("cc-version__debian12-gcc12.2.0.txt")),
        }
    )
    system = make_system(
        tmp_path,
        nvml=nvml,
        runner=runner,
        tools={"nvcc": tmp_path / "usr/local/cuda/bin/nvcc", "cc": tmp_path / "usr/bin/cc"},
    )
    profile = roundtrip(probe_host(system))
    assert [(g.name, g.compute_capability, g.memory_mb) for g in profile.nvidia_gpus] == [
        ("NVIDIA H100 80GB HBM3", "9.0", 81559)
    ] * 2
    assert (profile.nvidia.driver_version, profile.nvidia.cuda_driver_version) == ("570.133.20", "12.8")
    assert profile.cpu.brand == "Intel(R) Xeon(R) Platinum 8480+"
    assert "amx_tile" in profile.cpu.flags
    assert (profile.toolchain.nvcc, profile.toolchain.cuda_cublas, profile.toolchain.cc) == (
        "12.5",
        True,
        "gcc 12.2.0",
    )
    assert profile.notes == ()


def test_a_gpu_with_no_driver(tmp_path):
    pci_device(tmp_path, "0000:01:00.0", "0x10de", "0x2684", "0x030000")
    nvml = FakeNvml("", 0, [], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    profile = roundtrip(probe_host(make_system(tmp_path, nvml=nvml)))
    (gpu,) = profile.gpus
    assert gpu.vendor == "nvidia" and "name unknown" in gpu.name
    assert profile.nvidia is None
    assert any("no driver answers" in n for n in profile.notes)


def test_an_apple_silicon_mac(tmp_path):
    runner = RecordedRunner(
        {("sysctl", "hw", "machdep.cpu"): ok(raw("sysctl-hw-machdep__macos15-apple-m3-max.txt"))}
    )
    system = make_system(
        tmp_path,
        system="darwin",
        machine="arm64",
        runner=runner,
        tools={"sysctl": tmp_path / "usr/sbin/sysctl"},
    )
    profile = roundtrip(probe_host(system))
    assert [(g.vendor, g.name) for g in profile.gpus] == [("apple", "Apple M3 Max")]
    assert (profile.os.libc, profile.cpu.brand, profile.memory_mb) == (None, "Apple M3 Max", 36864)
    assert {"neon", "bf16"} <= set(profile.cpu.flags)


def test_an_amd_box_gets_rocm_version_from_hipcc(tmp_path):
    write_tree(
        tmp_path,
        {
            "sys/class/kfd/kfd/topology/nodes/1/properties": raw(
                "kfd-topology-node-properties__mi210-gfx90a-node2.txt"
            )
        },
    )
    runner = RecordedRunner(
        {("hipcc", "--version"): ok(raw("hipconfig-full__rocm6.2.0-hip6.2.41133-znver4.txt"))}
    )
    system = make_system(tmp_path, runner=runner, tools={"hipcc": tmp_path / "opt/rocm/bin/hipcc"})
    profile = roundtrip(probe_host(system))
    assert [g.gfx for g in profile.amd_gpus] == ["gfx90a"]
    assert (profile.toolchain.hipcc, profile.rocm.version) == ("6.2.41133", "6.2")
