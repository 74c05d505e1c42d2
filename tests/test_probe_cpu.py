"""CPU: recorded /proc/cpuinfo and sysctl text through py-cpuinfo's real per-source parsers."""

from __future__ import annotations

from types import SimpleNamespace

import cpuinfo
import pytest

from provision.probe import apple
from provision.probe.cpu import cpuinfo_from_proc, parse_cgroup_cpu_max, parse_meminfo_mb, probe_cpu
from tests.support.probe import make_system, raw, recorded, write_tree

# file -> (brand, flags that must be there, flags that must not)
PROC_CPUINFO = {
    "proc-cpuinfo__x86_64-xeon-platinum-8480plus-sapphirerapids-avx512-amx.txt": (
        "Intel(R) Xeon(R) Platinum 8480+",
        {"avx512f", "avx512_fp16", "amx_tile", "avx2", "fma"},
        set(),
    ),
    "proc-cpuinfo__x86_64-epyc-9654-zen4-avx512.txt": (
        "AMD EPYC 9654 96-Core Processor",
        {"avx512f", "avx512_bf16", "avx512_vnni", "avx2"},
        {"amx_tile"},
    ),
    "proc-cpuinfo__x86_64-xeon-e5-2650v2-ivybridge-avx-no-avx2.txt": (
        "Intel(R) Xeon(R) CPU E5-2650 v2 @ 2.60GHz",
        {"avx", "f16c"},
        {"avx2", "fma"},
    ),
    "proc-cpuinfo__x86_64-opteron-6136-k10-no-avx.txt": (
        "AMD Opteron(tm) Processor 6136",
        {"sse4a", "popcnt"},
        {"avx"},
    ),
    "proc-cpuinfo__aarch64-graviton3-neoverse-v1-sve.txt": (
        "Neoverse-V1",
        {"sve", "bf16", "i8mm", "asimd"},
        set(),
    ),
    "proc-cpuinfo__aarch64-graviton2-neoverse-n1.txt": ("Neoverse-N1", {"asimddp", "asimd"}, {"sve"}),
}


@pytest.mark.parametrize("name", sorted(PROC_CPUINFO))
def test_proc_cpuinfo_through_py_cpuinfo(tmp_path, name):
    brand, present, absent = PROC_CPUINFO[name]
    write_tree(
        tmp_path, {"proc/cpuinfo": raw(name), "proc/meminfo": recorded("proc-meminfo__24gib-debian12.txt")}
    )
    found = probe_cpu(make_system(tmp_path, machine="aarch64" if "aarch64" in name else "x86_64"), None)
    cpu, memory = found.value
    assert cpu.brand == brand
    assert present <= set(cpu.flags)
    assert not (absent & set(cpu.flags))
    assert list(cpu.flags) == sorted(cpu.flags)
    assert memory == 24684096 // 1024
    assert cpu.cores == 16
    assert found.notes == ()


def test_this_ci_box_recorded(tmp_path):
    write_tree(tmp_path, {"proc/cpuinfo": recorded("proc-cpuinfo__x86_64-amd-epyc-vm-avx512.txt")})
    cpu, _ = probe_cpu(make_system(tmp_path), None).value
    assert cpu.brand == "AMD EPYC"
    assert {"avx512f", "avx2", "fma", "f16c"} <= set(cpu.flags)


def test_proc_cpuinfo_is_read_without_a_subprocess(monkeypatch):
    """py-cpuinfo would `cat /proc/cpuinfo`; the probe hands it the text instead."""

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"py-cpuinfo ran a command: {args}")

    monkeypatch.setattr(cpuinfo.cpuinfo, "_run_and_get_stdout", no_subprocess)
    original = cpuinfo.cpuinfo.DataSource.__dict__["cat_proc_cpuinfo"]
    info = cpuinfo_from_proc(cpuinfo, raw("proc-cpuinfo__x86_64-epyc-9654-zen4-avx512.txt"))
    assert info["brand_raw"] == "AMD EPYC 9654 96-Core Processor"
    assert cpuinfo.cpuinfo.DataSource.__dict__["cat_proc_cpuinfo"] is original  # restored afterwards


SYSCTL = {
    "sysctl-hw-machdep__macos12-apple-m1-pro.txt": ("Apple M1 Pro", 16384, {"neon", "asimd", "asimdhp"}),
    "sysctl-hw-machdep__macos12-apple-m2.txt": ("Apple M2", 16384, {"neon", "asimd", "bf16", "i8mm"}),
    "sysctl-hw-machdep__macos15-apple-m3-max.txt": (
        "Apple M3 Max",
        36864,
        {"neon", "asimddp", "bf16", "i8mm"},
    ),
}


@pytest.mark.parametrize("name", sorted(SYSCTL))
def test_apple_silicon_sysctl(tmp_path, name):
    brand, memory, flags = SYSCTL[name]
    text = raw(name)
    found = probe_cpu(make_system(tmp_path, system="darwin", machine="arm64"), text)
    cpu, memory_mb = found.value
    assert (cpu.brand, memory_mb) == (brand, memory)
    assert flags <= set(cpu.flags)
    gpu = apple.apple_gpu("arm64", apple.parse_sysctl(text))
    assert (gpu.vendor, gpu.name, gpu.memory_mb) == ("apple", brand, memory)


def test_rosetta_python_still_sees_apple_silicon():
    sysctl = apple.parse_sysctl(raw("sysctl-hw-machdep__macos12-apple-m1-pro.txt"))
    assert apple.apple_gpu("x86_64", sysctl).name == "Apple M1 Pro"


def test_intel_mac(tmp_path):
    text = raw("sysctl-machdep-cpu__macos10.14-intel-i5-3230m-ivybridge.txt")
    found = probe_cpu(make_system(tmp_path, system="darwin", machine="x86_64"), text)
    cpu, memory = found.value
    assert cpu.brand == "Intel(R) Core(TM) i5-3230M CPU @ 2.60GHz"
    # sysctl says AVX1.0 / SSE4.2; the profile uses the Linux names.
    assert {"avx", "f16c", "sse4_2", "sse4_1"} <= set(cpu.flags)
    assert "avx2" not in cpu.flags and "avx1.0" not in cpu.flags
    assert memory is None  # this capture has no hw.memsize
    assert "memory: total RAM unknown" in found.notes
    assert apple.apple_gpu("x86_64", apple.parse_sysctl(text)) is None


def test_missing_private_parsers_fall_back_to_the_public_api(tmp_path):
    write_tree(tmp_path, {"proc/cpuinfo": raw("proc-cpuinfo__x86_64-epyc-9654-zen4-avx512.txt")})
    # A py-cpuinfo whose internals moved: only the public function is left.
    moved = SimpleNamespace(
        get_cpu_info=lambda: {"brand_raw": "AMD EPYC 9654 96-Core Processor", "flags": ["AVX2"]}
    )
    found = probe_cpu(make_system(tmp_path, load_cpuinfo=lambda: moved), None)
    assert found.value[0].flags == ("avx2",)
    assert any("per-source parsers are missing" in n for n in found.notes)


def test_without_py_cpuinfo_or_proc(tmp_path):
    found = probe_cpu(make_system(tmp_path, load_cpuinfo=lambda: None), None)
    cpu, memory = found.value
    assert (cpu.brand, cpu.flags, memory) == (None, (), None)
    assert any("py-cpuinfo is not installed" in n for n in found.notes)
    assert any("/proc/cpuinfo is not readable" in n for n in found.notes)


def test_meminfo_recorded():
    assert parse_meminfo_mb(recorded("proc-meminfo__24gib-debian12.txt")) == 24105
    assert parse_meminfo_mb("") is None


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("200000 100000\n", 2),
        ("150000 100000\n", 2),
        ("max 100000\n", None),
        ("50000 100000\n", 1),
        ("garbage\n", None),
    ],
)
def test_cgroup_cpu_max(text, cpus):
    assert parse_cgroup_cpu_max(text) == cpus


def test_cgroup_quota_caps_cores(tmp_path):
    write_tree(tmp_path, {"sys/fs/cgroup/cpu.max": "400000 100000\n"})
    found = probe_cpu(make_system(tmp_path), None)
    assert found.value[0].cores == 4
    assert any("cgroup CPU quota allows 4 of 16" in n for n in found.notes)
