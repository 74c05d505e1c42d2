"""`plan --resolve`: real `uv pip compile` runs against PyPI for the plan's target platform.

The pure parts (platform tags, output parsing, same-files table) are fed real text; the slow
tests resolve a GPU plan (H100, driver 590) from this CPU machine and catch a deliberately
conflicting environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from provision.plan import PlanRequest
from provision.planner import load_recipes, make_plan
from provision.planner.resolve import check_same_files, parse_pins, resolve_plan, target_platform
from provision.profile import load_profile

PROFILES = Path(__file__).parent / "profiles"


@pytest.fixture(scope="module")
def recipes():
    return load_recipes()


def plan_for(name, recipes, request=None):
    return make_plan(load_profile(PROFILES / f"{name}.json"), request or PlanRequest(), recipes)


def test_target_platforms(recipes):
    rec = recipes.resolve
    assert target_platform(plan_for("linux-h100-driver590", recipes), rec) == "x86_64-manylinux_2_35"
    assert (
        target_platform(plan_for("linux-gh200-aarch64-driver590", recipes), rec) == "aarch64-manylinux_2_35"
    )
    assert target_platform(plan_for("centos7-glibc2.17-cpu", recipes), rec) == "x86_64-manylinux_2_17"
    assert target_platform(plan_for("macos-m1max", recipes), rec) == "aarch64-apple-darwin"
    assert (
        target_platform(plan_for("windows-rtx2080super-driver610", recipes), rec) == "x86_64-pc-windows-msvc"
    )
    # glibc 2.30 has no tag of its own in uv: rounded down to 2.28.
    p = plan_for("linux-h100-driver590", recipes)
    p = replace(p, profile=replace(p.profile, os=replace(p.profile.os, libc="glibc 2.30")))
    assert target_platform(p, rec) == "x86_64-manylinux_2_28"


def test_parse_pins_reads_uv_output():
    # Captured: `uv pip compile --no-header --no-annotate` for the main env of this machine's plan.
    text = (
        "click==8.1.8\nhuggingface-hub==1.16.1\ntorch==2.15.0\nxinference==4.1.0\nxllamacpp==2026.10.11549\n"
    )
    assert parse_pins(text) == {
        "click": "8.1.8",
        "huggingface-hub": "1.16.1",
        "torch": "2.15.0",
        "xinference": "4.1.0",
        "xllamacpp": "2026.10.11549",
    }


def test_same_files_table(recipes):
    rec = recipes.resolve
    both = check_same_files({"opencv-python": "4.10.0.84", "opencv-python-headless": "5.0.0.93"}, rec)
    assert len(both) == 1 and "'cv2' module" in both[0]
    assert check_same_files({"pynvml": "11.5.0", "nvidia-ml-py": "13.615.71"}, rec)
    # pynvml >= 12 is a shim over nvidia-ml-py: no clash.
    assert check_same_files({"pynvml": "13.0.1", "nvidia-ml-py": "13.615.71"}, rec) == []


@pytest.mark.slow
def test_gpu_plan_resolves_from_this_cpu_machine(recipes):
    plan = plan_for("linux-h100-driver590", recipes)
    report = resolve_plan(plan, recipes)
    assert report.ok, report.render()
    by_name = {e.name: e for e in report.environments}
    assert set(by_name) == {"main", "vllm", "sglang"}
    assert by_name["vllm"].resolved["vllm"] == "0.33.0"
    assert by_name["vllm"].resolved["torch"] == "2.14.0"
    assert by_name["sglang"].resolved["sglang"] == "0.5.23"
    assert by_name["sglang"].resolved["torch"] == "2.14.1"
    assert by_name["main"].resolved["xinference"] == "4.1.0"
    assert by_name["main"].resolved["click"].startswith("8.1.")
    assert "llama-cpp-python" not in by_name["main"].resolved  # a source build: its deps stand in
    assert all(e.platform == "x86_64-manylinux_2_35" for e in report.environments)


@pytest.mark.slow
def test_conflicting_environment_is_caught(recipes):
    plan = plan_for("linux-h100-driver590", recipes)
    # xinference 4.1.0 and vllm 0.33.0 in one environment: click<8.2.0 vs huggingface-hub>=1.31.
    vllm = replace(plan.backend("vllm"), environment="main")
    main = replace(
        plan.environment("main"),
        backends=("xinference", "vllm"),
        requirements=("xinference==4.1.0", "vllm==0.33.0"),
    )
    together = replace(plan, backends=(plan.backend("xinference"), vllm), environments=(main,))
    report = resolve_plan(together, recipes)
    assert not report.ok
    assert "xinference" in report.summary() and "incompatible" in report.summary()
    # Left unpinned, a resolver silently falls back to an old vllm: caught by the version check.
    loose = replace(main, requirements=("xinference==4.1.0", "vllm"))
    report = resolve_plan(replace(together, environments=(loose,)), recipes)
    assert not report.ok
    assert "a silent fallback" in report.summary() or "does not resolve" in report.summary()


@pytest.mark.slow
def test_cli_resolve_json():
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "provision",
            "plan",
            "--auto",
            "--resolve",
            "--json",
            "--profile",
            str(PROFILES / "linux-cpu-debian12-nvcc-no-cublas.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["resolution"]["ok"] is True


def test_plan_with_no_backends_resolves_nothing(recipes):
    plan = plan_for("linux-8x-a100-driver450", recipes)
    assert resolve_plan(plan, recipes).environments == []


def test_source_build_is_replaced_by_its_declared_requirements(recipes):
    from provision.planner.resolve import env_inputs

    plan = plan_for("linux-graviton3-cpu", recipes)
    reqs, excluded, notes = env_inputs(plan, plan.environment("main"), recipes)
    assert "llama-cpp-python==0.3.36" not in reqs and "diskcache>=5.6.1" in reqs
    assert {"llama-cpp-python", "transformers-stream-generator", "fvcore"} <= set(excluded)
    assert any("built from source" in n for n in notes)
