"""Where torch comes from: the planned index when it answers, else a build with the same variant tag."""

from __future__ import annotations

import socket

import pytest

from provision.errors import OperationFailed
from provision.install.index_pages import index_reachable, wheel_names_in_html
from provision.install.torch_source import pick_build, resolve_torch_source

# File names as they appear on download.pytorch.org/whl/* and in this machine's /opt/wheels.
NAMES = [
    "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
    "torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl",
    "torch-2.13.0+cu126-cp311-cp311-manylinux_2_28_x86_64.whl",
    "torch-2.12.1+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
    "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_aarch64.whl",
    "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl",
]


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/whl/cpu"


def test_pick_build_takes_the_variant_python_and_arch_asked_for():
    assert str(pick_build(NAMES, "cpu", "", "cp311", "x86_64")) == "2.13.0+cpu"
    assert str(pick_build(NAMES, "cpu", "<2.13", "cp311", "x86_64")) == "2.12.1+cpu"
    assert str(pick_build(NAMES, "cu126", ">=2.6", "cp311", "x86_64")) == "2.13.0+cu126"
    assert str(pick_build(NAMES, "cpu", "", "cp311", "aarch64")) == "2.13.0+cpu"
    assert pick_build(NAMES, "cu130", "", "cp311", "x86_64") is None
    assert pick_build(NAMES, "cpu", "", "cp310", "x86_64") is None


def test_simple_index_page_anchors():
    page = (
        '<a href="../../files/timm-1.0.29-py3-none-any.whl#sha256=4266">timm-1.0.29-py3-none-any.whl</a>\n'
        '<a href="/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl#sha256=ab">x</a>'
    )
    assert wheel_names_in_html(page) == [
        "timm-1.0.29-py3-none-any.whl",
        "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
    ]


def test_unreachable_index_falls_back_to_a_matching_local_build(tmp_path):
    url = _closed_port_url()
    assert not index_reachable(url, timeout=2)
    links = tmp_path / "wheels"
    links.mkdir()
    for n in NAMES[:3] + [
        "torchvision-0.28.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        "torchvision-0.27.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
    ]:
        (links / n).touch()
    src = resolve_torch_source("cpu", url, None, (str(links),), "cp311", "x86_64")
    assert src.torch_requirement == "torch==2.13.0+cpu"
    assert src.index_url is None
    assert src.companions == ("torchvision==0.28.0+cpu",)
    assert "unreachable" in src.reason


def test_unreachable_index_without_a_matching_build_names_the_variant(tmp_path):
    links = tmp_path / "wheels"
    links.mkdir()
    (links / NAMES[0]).touch()  # a +cpu build must never stand in for cu126
    with pytest.raises(OperationFailed, match=r"variant 'cu126'"):
        resolve_torch_source("cu126", _closed_port_url(), ">=2.6", (str(links),), "cp311", "x86_64")


def test_default_index_is_used_as_is():
    src = resolve_torch_source("cu130", None, "==2.14.0", (), "cp312", "x86_64")
    assert src.torch_requirement == "torch==2.14.0"
    assert src.index_url is None
