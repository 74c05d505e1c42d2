"""Build tools: version parsers on recorded output, the cuBLAS check on toolkit trees, timeouts."""

from __future__ import annotations

import stat

import pytest

from provision.probe import toolchain as tc
from provision.probe.system import run_command
from tests.support.probe import RecordedRunner, make_system, ok, raw, recorded, write_tree


def test_recorded_versions():
    assert tc.parse_cmake_version(recorded("cmake-version__debian12-cmake3.25.1.txt")) == "3.25.1"
    assert tc.parse_ninja_version(recorded("ninja-version__debian12-1.11.1.txt")) == "1.11.1"
    assert tc.parse_ccache_version(recorded("ccache-version__debian12-4.7.5.txt")) == "4.7.5"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cc-version__debian12-gcc12.2.0.txt", "gcc 12.2.0"),
        ("cc-version__centos-stream9-gcc11.4.1.txt", "gcc 11.4.1"),
        ("cc-version__macos14-apple-clang15.0.0.txt", "Apple clang 15.0.0"),
    ],
)
def test_cc_versions(name, expected):
    assert tc.parse_cc_version(recorded(name)) == expected


def test_cc_version_of_nothing():
    assert tc.parse_cc_version("") is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("nvcc-version__cuda11.5.119-wsl2.txt", "11.5"),
        ("nvcc-version__cuda12.5.82-wsl2.txt", "12.5"),
        ("nvcc-version__cuda13.0.48-linux.txt", "13.0"),
    ],
)
def test_nvcc_versions(name, expected):
    assert tc.parse_nvcc_version(raw(name)) == expected


def test_nvcc_recorded_here():
    assert tc.parse_nvcc_version(recorded("nvcc-version__cuda13.0.88-debian12-no-cublas.txt")) == "13.0"


def toolkit(root, *, cublas: bool):
    files = {"bin/nvcc": "", "include/cuda_runtime.h": "", "lib64/libcudart.so.13": ""}
    if cublas:
        files |= {"include/cublas_v2.h": "", "lib64/libcublas.so.13": ""}
    write_tree(root, files)
    return root / "bin" / "nvcc"


def nvcc_runner():
    return RecordedRunner(
        {("nvcc", "--version"): ok(recorded("nvcc-version__cuda13.0.88-debian12-no-cublas.txt"))}
    )


def test_nvcc_without_cublas(tmp_path):
    nvcc = toolkit(tmp_path / "usr/local/cuda-13.0", cublas=False)
    found = tc.probe_toolchain(make_system(tmp_path, runner=nvcc_runner(), tools={"nvcc": nvcc}))
    assert (found.value.nvcc, found.value.cuda_cublas) == ("13.0", False)
    assert any("nvcc found but not cuBLAS" in n for n in found.notes)


def test_nvcc_with_cublas(tmp_path):
    nvcc = toolkit(tmp_path / "opt/cuda", cublas=True)
    found = tc.probe_toolchain(make_system(tmp_path, runner=nvcc_runner(), tools={"nvcc": nvcc}))
    assert (found.value.nvcc, found.value.cuda_cublas) == ("13.0", True)
    assert found.notes == ()


def test_nvcc_wrapper_script_finds_the_default_toolkit(tmp_path):
    # This CI box: /usr/local/bin/nvcc is `exec /usr/local/cuda-13.0/bin/nvcc "$@"`, so the
    # wrapper's own directory is not the toolkit; /usr/local/cuda is.
    toolkit(tmp_path / "usr/local/cuda", cublas=True)
    write_tree(tmp_path, {"usr/local/bin/nvcc": '#!/bin/sh\nexec /usr/local/cuda-13.0/bin/nvcc "$@"\n'})
    system = make_system(tmp_path, runner=nvcc_runner(), tools={"nvcc": tmp_path / "usr/local/bin/nvcc"})
    assert tc.probe_toolchain(system).value.cuda_cublas is True


def test_cuda_home_toolkit_with_targets_layout(tmp_path):
    root = tmp_path / "cuda"
    write_tree(
        root,
        {
            "bin/nvcc": "",
            "targets/x86_64-linux/include/cublas_v2.h": "",
            "targets/x86_64-linux/lib/libcublas.so.12": "",
        },
    )
    system = make_system(
        tmp_path, runner=nvcc_runner(), tools={"nvcc": root / "bin/nvcc"}, env={"CUDA_HOME": str(root)}
    )
    assert tc.probe_toolchain(system).value.cuda_cublas is True


def test_no_nvcc_means_cublas_unknown(tmp_path):
    found = tc.probe_toolchain(make_system(tmp_path))
    assert found.value == tc.Toolchain()
    assert found.notes == ()


def test_cc_env_names_the_compiler(tmp_path):
    runner = RecordedRunner(
        {("clang", "--version"): ok(recorded("cc-version__macos14-apple-clang15.0.0.txt"))}
    )
    system = make_system(
        tmp_path,
        runner=runner,
        env={"CC": "clang -m64"},
        tools={"clang": tmp_path / "bin/clang", "cc": tmp_path / "bin/cc"},
    )
    assert tc.probe_toolchain(system).value.cc == "Apple clang 15.0.0"


def test_a_hanging_tool_is_cut_off_and_noted(tmp_path, monkeypatch):
    """Real processes: a `cmake` that never answers is killed at the timeout; the rest still report."""
    monkeypatch.setattr(tc, "TOOL_TIMEOUT_S", 0.5)
    hang = tmp_path / "cmake"
    hang.write_text("#!/bin/sh\nsleep 60\necho never\n")  # sleep is a child holding our pipes
    answer = tmp_path / "ninja"
    answer.write_text("#!/bin/sh\necho 1.11.1\n")
    for script in (hang, answer):
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    system = make_system(tmp_path, tools={"cmake": hang, "ninja": answer})
    system.run = run_command
    found = tc.probe_toolchain(system)
    assert (found.value.cmake, found.value.ninja) == (None, "1.11.1")
    assert any(f"{hang} --version failed (TimeoutExpired" in n for n in found.notes)
