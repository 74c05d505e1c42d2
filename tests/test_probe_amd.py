"""AMD: gfx spellings, KFD topology trees, rocminfo / rocm_agent_enumerator output, overrides."""

from __future__ import annotations

import json
import re

import pytest

from provision.errors import UserError
from provision.probe import amd_parse as p
from provision.probe.amd import ENV_AMD_GPU_ARCHITECTURE, KFD_NODES, probe_amd
from provision.probe.pci import display_controllers
from tests.support.probe import RAW, RecordedRunner, make_system, ok, pci_device, raw, write_tree

KFD = {
    "kfd-topology-node-properties__cpu-node0-on-mi300x-host.txt": None,
    "kfd-topology-node-properties__mi210-gfx90a-node2.txt": "gfx90a",
    "kfd-topology-node-properties__mi300x-cpx-partition-gfx942-node10.txt": "gfx942",
    "kfd-topology-node-properties__vega10-old-kernel-no-gfx-target-version-node1.txt": None,
}


@pytest.mark.parametrize("name", sorted(KFD))
def test_kfd_properties(name):
    properties = p.parse_kfd_properties(raw(name))
    gpu = p.kfd_gpu(3, properties)
    if "cpu-node" in name:
        assert gpu is None  # CPU nodes have no SIMDs and are skipped
    else:
        assert gpu.gfx == KFD[name]
        assert gpu.device_id == properties["device_id"]


def test_old_kernel_node_has_memory_but_no_gfx():
    gpu = p.kfd_gpu(
        1,
        p.parse_kfd_properties(
            raw("kfd-topology-node-properties__vega10-old-kernel-no-gfx-target-version-node1.txt")
        ),
    )
    assert gpu.gfx is None
    assert gpu.memory_mb == 17163091968 // (1024 * 1024)


@pytest.mark.parametrize(
    ("value", "gfx"),
    [
        (90010, "gfx90a"),
        (90402, "gfx942"),
        (110001, "gfx1101"),
        (100300, "gfx1030"),
        (90006, "gfx906"),
        (90500, "gfx950"),
        (0, None),
    ],
)
def test_gfx_from_target_version(value, gfx):
    assert p.gfx_from_target_version(value) == gfx


def test_rocm_smi_quirky_gfx_versions_are_mapped_back():
    mi250x = json.loads(raw("rocm-smi-showproductname-json__mi250x-gfx9010-quirk.json"))["card0"][
        "GFX Version"
    ]
    rx7800 = json.loads(raw("rocm-smi-json__rx7800xt-gfx1101-rocm6.2.4.json"))["card0"]["GFX Version"]
    assert (mi250x, rx7800) == ("gfx9010", "gfx11001")
    assert p.normalise_gfx(mi250x) == "gfx90a"
    assert p.normalise_gfx(rx7800) == "gfx1101"


def test_amd_smi_target_graphics_version():
    target = re.search(
        r"TARGET_GRAPHICS_VERSION: (\S+)", raw("amd-smi-static__mi350x-gfx950-gpu0.txt")
    ).group(1)
    assert p.normalise_gfx(target) == "gfx950"


@pytest.mark.parametrize(
    ("raw_value", "gfx"),
    [
        ("gfx942", "gfx942"),
        ("GFX90A", "gfx90a"),
        (" gfx1100 ", "gfx1100"),
        ("gfx000", None),
        ("gfx", None),
        ("sm_90", None),
        ("gfx9x", None),
    ],
)
def test_normalise_gfx(raw_value, gfx):
    assert p.normalise_gfx(raw_value) == gfx


def test_rocm_agent_enumerator():
    assert p.parse_rocm_agent_enumerator(raw("rocm-agent-enumerator__gfx803-plus-gfx902-apu.txt")) == [
        "gfx803",
        "gfx902",
    ]
    assert (
        p.parse_rocm_agent_enumerator(raw("rocm-agent-enumerator__8x-mi300x-gfx942-no-gfx000.txt"))
        == ["gfx942"] * 8
    )


ROCMINFO = {
    "rocminfo__rx6700xt-gfx1030-i3-12100f.txt": [("AMD Radeon RX 6700 XT", "gfx1030", 1)],
    "rocminfo__8x-vega20-gfx906-epyc7551p-2019.txt": [("Vega 20", "gfx906", n) for n in range(4, 12)],
    "rocminfo-fragment__mi300x-gfx942-agent-rocm6.3.3.txt": [("AMD Instinct MI300X", "gfx942", 2)],
    "rocminfo-fragment__mi250x-gfx90a-agent16-runtime1.14.txt": [("AMD Instinct MI250X/MI250", "gfx90a", 15)],
    "rocminfo-fragment__rx7900xtx-gfx1100-agent3.txt": [("Radeon RX 7900 XTX", "gfx1100", 2)],
}


def test_every_rocminfo_fixture_is_covered():
    assert {f.name for f in RAW.glob("rocminfo*")} == set(ROCMINFO)


@pytest.mark.parametrize("name", sorted(ROCMINFO))
def test_rocminfo(name):
    text = raw(name)
    agents = p.parse_rocminfo(text)
    assert [(a.name, a.gfx, a.node) for a in agents] == ROCMINFO[name]


def test_rocminfo_ansi_escapes_are_in_the_capture():
    assert "\x1b[37m" in raw("rocminfo__rx6700xt-gfx1030-i3-12100f.txt")


def test_hip_versions():
    new = p.parse_hip_version(raw("hipconfig-full__rocm6.2.0-hip6.2.41133-znver4.txt"))
    old = p.parse_hip_version(raw("hipconfig-full__rocm3.10.0-old-format.txt"))
    assert (new, old) == ("6.2.41133", "3.10.20465")
    assert (p.rocm_version_from_hip(new), p.rocm_version_from_hip(old)) == ("6.2", "3.10")
    # `hipconfig --version` prints the bare first line's value.
    assert p.parse_hip_version("6.2.41133-dd7f95766") == "6.2.41133"


def kfd_tree(root, nodes: dict[int, str]):
    write_tree(root, {f"{KFD_NODES}/{n}/properties": raw(name) for n, name in nodes.items()})


def test_kfd_tree_without_rocm_tools(tmp_path):
    kfd_tree(
        tmp_path,
        {
            0: "kfd-topology-node-properties__cpu-node0-on-mi300x-host.txt",
            1: "kfd-topology-node-properties__vega10-old-kernel-no-gfx-target-version-node1.txt",
            2: "kfd-topology-node-properties__mi210-gfx90a-node2.txt",
            10: "kfd-topology-node-properties__mi300x-cpx-partition-gfx942-node10.txt",
        },
    )
    found = probe_amd(make_system(tmp_path), [])
    assert [(g.vendor, g.name, g.gfx, g.index) for g in found.value.gpus] == [
        ("amd", "AMD GPU (gfx unknown)", None, 0),
        ("amd", "AMD GPU (gfx90a)", "gfx90a", 1),
        ("amd", "AMD GPU (gfx942)", "gfx942", 2),
    ]
    assert any("KFD node 1 has no gfx target" in n for n in found.notes)
    assert found.value.rocm is None


def test_rocminfo_names_kfd_nodes(tmp_path):
    kfd_tree(
        tmp_path,
        {
            0: "kfd-topology-node-properties__cpu-node0-on-mi300x-host.txt",
            2: "kfd-topology-node-properties__mi300x-cpx-partition-gfx942-node10.txt",
        },
    )
    runner = RecordedRunner({("rocminfo",): ok(raw("rocminfo-fragment__mi300x-gfx942-agent-rocm6.3.3.txt"))})
    system = make_system(
        tmp_path, runner=runner, trusted_tools={"rocminfo": tmp_path / "opt/rocm/bin/rocminfo"}
    )
    (gpu,) = probe_amd(system, []).value.gpus
    assert (gpu.name, gpu.gfx) == ("AMD Instinct MI300X", "gfx942")


def test_old_kernel_asks_rocm_agent_enumerator(tmp_path):
    vega = "kfd-topology-node-properties__vega10-old-kernel-no-gfx-target-version-node1.txt"
    kfd_tree(tmp_path, {0: "kfd-topology-node-properties__cpu-node0-on-mi300x-host.txt", 1: vega, 2: vega})
    runner = RecordedRunner(
        {("rocm_agent_enumerator",): ok(raw("rocm-agent-enumerator__gfx803-plus-gfx902-apu.txt"))}
    )
    system = make_system(
        tmp_path,
        runner=runner,
        trusted_tools={"rocm_agent_enumerator": tmp_path / "opt/rocm/bin/rocm_agent_enumerator"},
    )
    found = probe_amd(system, [])
    assert [g.gfx for g in found.value.gpus] == ["gfx803", "gfx902"]
    assert found.notes == ()


def test_rocminfo_alone_when_kfd_is_hidden(tmp_path):
    runner = RecordedRunner({("rocminfo",): ok(raw("rocminfo__8x-vega20-gfx906-epyc7551p-2019.txt"))})
    system = make_system(
        tmp_path, runner=runner, trusted_tools={"rocminfo": tmp_path / "opt/rocm/bin/rocminfo"}
    )
    gpus = probe_amd(system, []).value.gpus
    assert [(g.name, g.gfx) for g in gpus] == [("Vega 20", "gfx906")] * 8


def test_no_kfd_but_amd_display_controller_is_noted(tmp_path):
    pci_device(tmp_path, "0000:03:00.0", "0x1002", "0x744c", "0x030000")
    system = make_system(tmp_path)
    found = probe_amd(system, display_controllers(system))
    assert found.value.gpus == ()
    assert any("no amdgpu compute (KFD) driver" in n for n in found.notes)


def test_env_override(tmp_path):
    found = probe_amd(make_system(tmp_path, env={ENV_AMD_GPU_ARCHITECTURE: "gfx942, gfx9010"}), [])
    assert [g.gfx for g in found.value.gpus] == ["gfx942", "gfx90a"]


@pytest.mark.parametrize("value", ["", "mi300x", "gfx942,sm_90"])
def test_bad_env_override_is_a_user_error(tmp_path, value):
    with pytest.raises(UserError, match=ENV_AMD_GPU_ARCHITECTURE):
        probe_amd(make_system(tmp_path, env={ENV_AMD_GPU_ARCHITECTURE: value}), [])


def test_rocm_version_file(tmp_path):
    # The file's format is not captured anywhere we could find; ROCm's packaging writes
    # "<version>-<build>" and that is the shape parsed.
    write_tree(tmp_path, {"opt/rocm/.info/version": "6.2.0-66\n"})
    assert probe_amd(make_system(tmp_path), []).value.rocm.version == "6.2.0"
