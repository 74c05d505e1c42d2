"""Class 3: a real CPU-only llama-cpp-python wheel in the wheelhouse under a GPU plan's key is refused.

The wheel is the one the session's `install --auto` built (provisioned_root); it is copied under
the key of a CUDA build, with its sha256 recorded as a genuine entry would have it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from provision.install import wheelhouse
from provision.install.progress import Reporter
from provision.install.wheel_guard import guarded_build, lacking
from provision.install.wheelhouse import BuildFailed, BuildRequest, checked_wheel, isa_features


def _real_cpu_wheel() -> Path:
    # The wheelhouse also holds CUDA builds (tests/test_gpu_target.py): take a CPU-only one.
    found = [
        w
        for w in sorted(wheelhouse.cache_root().glob("wheelhouse/*/llama_cpp_python-*.whl"))
        if wheelhouse.wheel_backends(w) == {"cpu"}
    ]
    if not found:
        pytest.fail("the session's wheelhouse has no CPU llama-cpp-python wheel after provisioned_root")
    return found[0]


def refuse_cpu_wheel_under_cuda_key(cpu_wheel: Path, root: Path) -> None:
    assert lacking(cpu_wheel, ("cpu",)) == ()
    req = BuildRequest("0.3.36", ("-DGGML_CUDA=on",), ("cpu", "cuda"), isa_features(("avx2",)), "x86_64")
    entry = root / "wheelhouse" / req.key
    entry.mkdir(parents=True)
    planted = entry / cpu_wheel.name
    shutil.copy2(cpu_wheel, planted)
    (entry / "build.json").write_text(json.dumps({"sha256": wheelhouse.sha256_file(planted)}))
    said: list[str] = []
    reporter = Reporter()
    reporter.say = said.append  # type: ignore[method-assign]
    assert checked_wheel(req.key, root, reporter) == planted  # the hash alone would let it through
    assert lacking(planted, req.expected_backends) == ("cuda",)
    rebuilt: list[str] = []

    def build() -> Path:
        got = checked_wheel(req.key, root, reporter)
        if got is not None:
            return got
        rebuilt.append(req.key)
        raise BuildFailed("no nvcc on this machine")  # what the real CUDA rebuild says here

    with pytest.raises(BuildFailed, match="no nvcc"):
        guarded_build(req, build, reporter.say)
    assert rebuilt == [req.key]
    assert not planted.exists()  # the CPU wheel is gone, never installed
    assert any("has no cuda backend" in m for m in said)


@pytest.mark.slow
def test_a_cpu_wheel_under_a_cuda_key_is_removed_and_rebuilt(provisioned_root, tmp_path):
    refuse_cpu_wheel_under_cuda_key(_real_cpu_wheel(), tmp_path)
