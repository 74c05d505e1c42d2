"""scripts/refresh-recipes against a local index on 127.0.0.1 serving a newer fake vllm.

The wheels are real (tiny) wheels whose metadata mirrors vLLM's shape: an exact torch pin, a
Requires-Python range, manylinux_2_28 wheels whose closure (llguidance) needs 2.31 on x86_64
and 2.34 on aarch64, and a torch that pulls nvidia-cuda-runtime. uv resolves them for real.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import tomllib

from provision.errors import OperationFailed
from provision.planner.derive import cuda_variant, python_range, python_tags
from provision.planner.index_meta import IndexFile
from provision.planner.recipe_write import Edit, apply_edits
from tests.support.cli import REPO
from tests.support.fake_index import FakeDist, build_wheels, serve_index

ARCHES = ("x86_64", "aarch64")
CLOSURE = [
    FakeDist(
        "torch",
        "2.14.0",
        tuple(f"py3-none-manylinux_2_28_{a}" for a in ARCHES),
        ("nvidia-cuda-runtime==13.0.96",),
    ),
    FakeDist(
        "torch",
        "2.15.0",
        tuple(f"py3-none-manylinux_2_28_{a}" for a in ARCHES),
        ("nvidia-cuda-runtime==13.2.51",),
    ),
    FakeDist("nvidia-cuda-runtime", "13.0.96"),
    FakeDist("nvidia-cuda-runtime", "13.2.51"),
    # vLLM's real floors come from a dependency, not its own tag: 2.31 on x86_64, 2.34 on aarch64.
    FakeDist("llguidance", "1.0.0", ("py3-none-manylinux_2_31_x86_64", "py3-none-manylinux_2_34_aarch64")),
]
VLLM_TAGS = tuple(f"cp38-abi3-manylinux_2_28_{a}" for a in ARCHES)
VLLM_033 = FakeDist("vllm", "0.33.0", VLLM_TAGS, ("torch==2.14.0", "llguidance>=1"), "<3.15,>=3.11")
# The newer release: a new torch pin (a CUDA 13.2 build) and a new Requires-Python floor.
VLLM_034 = FakeDist("vllm", "0.34.0", VLLM_TAGS, ("torch==2.15.0", "llguidance>=1"), "<3.15,>=3.12")
# The same release, but a dependency of it caps torch below its own pin: no resolution exists.
VLLM_034_CONFLICT = FakeDist(
    "vllm", "0.34.0", VLLM_TAGS, ("torch==2.15.0", "llguidance>=1", "tconflict>=1"), "<3.15,>=3.12"
)
TCONFLICT = FakeDist("tconflict", "1.0.0", requires=("torch<2.15",))


def _recipes_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes", folder)
    return folder


def _refresh(folder: Path, index: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "refresh-recipes"),
            "--recipes",
            str(folder),
            "--index-url",
            index,
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_newer_release_rewrites_the_facts_it_changed_with_their_source(tmp_path):
    folder = _recipes_copy(tmp_path)
    before = (folder / "backends.toml").read_text()
    wheels = build_wheels([*CLOSURE, VLLM_033, VLLM_034], tmp_path / "wheels")
    with serve_index(wheels) as (index, log):
        done = _refresh(folder, index, "--backend", "vllm")
    assert done.returncode == 0, done.stdout + done.stderr
    after = (folder / "backends.toml").read_text()
    vllm = tomllib.loads(after)["vllm"]
    assert vllm["version"] == "0.34.0"
    assert vllm["torch"] == "2.15.0"
    assert vllm["torch_variant"] == "cu132"  # from torch 2.15.0's nvidia-cuda-runtime 13.2
    assert vllm["wheel_cuda"] == "13"
    assert vllm["python_min"] == "3.12" and vllm["python_max"] == "3.14"
    assert (vllm["glibc_x86_64"], vllm["glibc_aarch64"]) == ("2.31", "2.34")  # the closure's floors
    assert tomllib.loads(after)["meta"]["derived_at"]["vllm"] == date.today()
    # Only vllm's changed facts and its date moved; every comment elsewhere is byte-identical.
    changed = [ln for ln in after.splitlines() if ln not in before.splitlines()]
    # version, torch, torch_variant, python_min, its derived_at, and the index the facts came from
    assert len(changed) == 6, changed
    assert tomllib.loads(after)["meta"]["index"] == index
    assert all(ln in after for ln in before.splitlines() if ln.startswith("#"))
    # The diff names each fact's source: the release's own metadata on this index, and the date.
    assert f'+torch = "2.15.0"  # vllm 0.34.0 Requires-Dist torch==2.15.0 on {index}' in done.stdout
    assert "nvidia-cuda-runtime==13.2.51 in the resolved closure" in done.stdout
    assert f"({date.today().isoformat()})" in done.stdout
    assert "NEEDS A HUMAN" not in done.stdout
    assert any(" 206" in entry for entry in log), "the wheel's METADATA was read with range requests"
    # The written file still loads as the planner reads it.
    from provision.planner.refresh import load_dir

    assert load_dir(folder)[1].version("vllm") == "0.34.0"


def test_a_conflict_in_the_newer_release_is_reported_and_not_written(tmp_path):
    folder = _recipes_copy(tmp_path)
    before = (folder / "backends.toml").read_text()
    wheels = build_wheels([*CLOSURE, VLLM_033, VLLM_034_CONFLICT, TCONFLICT], tmp_path / "wheels")
    with serve_index(wheels) as (index, _):
        done = _refresh(folder, index, "--backend", "vllm")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "NEEDS A HUMAN" in done.stdout
    assert "vllm 0.34.0: vllm==0.34.0 + torch==2.15.0 does not resolve" in done.stdout
    assert "tconflict" in done.stdout  # uv's own explanation names the dependency that conflicts
    assert (folder / "backends.toml").read_text() == before  # not one byte written


def test_a_dropped_wheel_is_reported_and_not_written(tmp_path):
    folder = _recipes_copy(tmp_path)
    before = (folder / "backends.toml").read_text()
    x86_only = FakeDist("vllm", "0.34.0", VLLM_TAGS[:1], VLLM_034.requires, VLLM_034.requires_python)
    wheels = build_wheels([*CLOSURE, VLLM_033, x86_only], tmp_path / "wheels")
    with serve_index(wheels) as (index, _):
        done = _refresh(folder, index, "--backend", "vllm", "--dry-run")
    assert done.returncode == 1
    assert "vllm 0.34.0 has no wheel for Linux aarch64" in done.stdout
    assert (folder / "backends.toml").read_text() == before


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    folder = _recipes_copy(tmp_path)
    done = _refresh(folder, "ftp://nowhere", "--backend", "vllm")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    done = _refresh(folder, "http://127.0.0.1:9/simple", "--backend", "nope")
    assert done.returncode == 2 and "unknown backend 'nope'" in done.stderr


# ---------------------------------------------------------------- the pure pieces


def test_python_range_and_tags():
    assert python_range("<3.15,>=3.11") == ("3.11", "3.14")
    assert python_range(">=3.10") == ("3.10", None)
    assert python_tags(
        IndexFile("s-1-cp311-cp311-manylinux_2_34_x86_64.whl", "", None, False, _v("1"), True)
    ) == (
        "3.11",
        "3.11",
    )
    assert python_tags(
        IndexFile("v-1-cp38-abi3-manylinux_2_28_x86_64.whl", "", None, False, _v("1"), True)
    ) == (
        "3.8",
        None,
    )


def test_cuda_variant_from_the_closure():
    assert cuda_variant({"nvidia-cuda-runtime-cu13": "13.0.96"}) == ("cu130", "13")
    assert cuda_variant({"nvidia-cuda-runtime": "13.2.51"}) == ("cu132", "13")
    assert cuda_variant({"numpy": "2.0"}) is None


def test_writer_keeps_comments_and_refuses_a_multiline_value():
    text = '# head\n[a]\nx = "1"  # old source\ny = [\n  1,\n]\n\n# next\n[b]\nx = "1"\n'
    out = apply_edits(text, [Edit("a", "x", "2", "new source")])
    assert out == text.replace('x = "1"  # old source', 'x = "2"  # new source')
    with pytest.raises(OperationFailed, match="spans several lines"):
        apply_edits(text, [Edit("a", "y", [2], "")])


def _v(s: str):
    from packaging.version import Version

    return Version(s)


# xinference's click pin and the huggingface-hub chain, and transformers as the newest release
# that co-installs with it. The sdist-only stand-ins of recipes/resolve.toml are served too.
STAND_INS = [
    FakeDist(n, "9.0.0")
    for n in ("numpy", "yacs", "pyyaml", "tqdm", "termcolor", "pillow", "tabulate", "iopath")
]
HUB_CHAIN = [
    FakeDist("click", "8.1.8"),
    FakeDist("click", "8.2.1"),
    FakeDist("click", "8.4.0"),
    FakeDist("huggingface-hub", "1.0.0"),
    FakeDist("huggingface-hub", "1.1.0", requires=("click>=8.2.1",)),  # still under xinference's cap
    FakeDist("huggingface-hub", "1.2.0", requires=("click>=8.4.0",)),  # the first one the cap excludes
    FakeDist("huggingface-hub", "1.3.0", requires=("click>=8.4.0",)),
    FakeDist(
        "transformers",
        "5.17.0",
        requires=("huggingface-hub<1.2,>=1.0",),
        requires_python=">=3.10",
        extras=("serving",),
    ),
    FakeDist(
        "transformers",
        "5.18.0",
        requires=("huggingface-hub>=1.2",),
        requires_python=">=3.10",
        extras=("serving",),
    ),
]
XINFERENCE_42 = FakeDist(
    "xinference",
    "4.2.0",
    requires=("click<8.3.0", "huggingface-hub>=0.19.4"),
    requires_python=">=3.10",
    extras=("transformers", "mlx", "vllm"),
)


def test_xinference_click_chain_and_the_transformers_it_co_installs_with(tmp_path):
    folder = _recipes_copy(tmp_path)
    wheels = build_wheels([*STAND_INS, *HUB_CHAIN, XINFERENCE_42], tmp_path / "wheels")
    with serve_index(wheels) as (index, _):
        done = _refresh(folder, index, "--backend", "xinference", "--backend", "transformers")
    assert done.returncode == 0, done.stdout + done.stderr
    tables = tomllib.loads((folder / "backends.toml").read_text())
    x, t = tables["xinference"], tables["transformers"]
    assert (x["version"], x["click_pin"], x["requires_python"]) == ("4.2.0", "click<8.3.0", "3.10")
    assert (x["hub_ceiling"], x["hub_click_min"]) == ("1.2.0", "8.4.0")
    assert t["version"] == "5.17.0"  # 5.18.0 needs hub >= 1.2, which needs click >= 8.4.0
    assert (
        "huggingface-hub 1.2.0 Requires-Dist click>=8.4.0 (the first release click<8.3.0 excludes)"
        in done.stdout
    )


def test_an_xinference_that_drops_an_extra_the_recipes_use_needs_a_human(tmp_path):
    folder = _recipes_copy(tmp_path)
    before = (folder / "backends.toml").read_text()
    no_mlx = FakeDist("xinference", "4.2.0", requires=XINFERENCE_42.requires, extras=("transformers",))
    wheels = build_wheels([*STAND_INS, *HUB_CHAIN, no_mlx], tmp_path / "wheels")
    with serve_index(wheels) as (index, _):
        done = _refresh(folder, index, "--backend", "xinference")
    assert done.returncode == 1
    assert "xinference 4.2.0 no longer offers the extra(s) mlx" in done.stdout
    assert (folder / "backends.toml").read_text() == before


def test_manylinux_floor_knows_aliases():
    from provision.planner.derive import manylinux_floor

    def wheel(name: str) -> IndexFile:
        return IndexFile(name, "", None, False, _v("1"), True)

    files = [
        wheel("x-1-cp310-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"),
        wheel("x-1-cp310-abi3-manylinux_2_28_aarch64.whl"),
        wheel("x-1-cp310-abi3-win_amd64.whl"),
    ]
    assert manylinux_floor(files) == ("2.17", ("manylinux2014", "manylinux_2_17"))
    assert manylinux_floor(files[1:]) == ("2.28", ("manylinux_2_28",))
    assert manylinux_floor(files[2:]) is None


def test_an_index_behind_the_recipes_is_not_a_downgrade(tmp_path):
    folder = _recipes_copy(tmp_path)
    before = (folder / "backends.toml").read_text()
    older = FakeDist("vllm", "0.32.0", VLLM_TAGS, VLLM_033.requires, VLLM_033.requires_python)
    wheels = build_wheels([*CLOSURE, older], tmp_path / "wheels")
    with serve_index(wheels) as (index, _):
        done = _refresh(folder, index, "--backend", "vllm")
    assert done.returncode == 1
    assert "is 0.32.0, older than the recipes' 0.33.0" in done.stdout
    assert (folder / "backends.toml").read_text() == before
