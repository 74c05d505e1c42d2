"""--model-types: Xinference's extras per model type, planned per host from recipes/model_types.toml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from provision.errors import UserError
from provision.plan import PlanRequest, plan_from_dict
from provision.planner import load_recipes, make_plan
from provision.planner.model_types import MODEL_TYPES, parse_model_types
from provision.profile import load_profile

PROFILES = Path(__file__).parent / "profiles"
ALL = MODEL_TYPES


@pytest.fixture(scope="module")
def recipes():
    return load_recipes()


def plan_for(name: str, types: tuple[str, ...], recipes):
    return make_plan(load_profile(PROFILES / f"{name}.json"), PlanRequest(model_types=types), recipes)


def xinference_spec(plan) -> Requirement:
    return Requirement(plan.backend("xinference").packages[0])


def test_parse():
    assert parse_model_types(None) == ("llm",)
    assert parse_model_types("all") == ALL
    assert parse_model_types("rerank, embedding,LLM") == ("llm", "embedding", "rerank")
    for bad, text in (("llm,speech", "unknown model type 'speech'"), (" , ", "--model-types is empty")):
        with pytest.raises(UserError, match=text):
            parse_model_types(bad)


def test_cpu_host_all_types(recipes):
    plan = plan_for("linux-cpu-debian12-nvcc-no-cublas", ALL, recipes)
    spec = xinference_spec(plan)
    assert spec.extras == {"transformers", "embedding", "rerank", "image", "video"}
    assert str(spec.specifier) == f"=={recipes.engine('xinference')['version']}"
    reason = plan.backend("xinference").reason
    t = recipes.model_types["types"]
    # Reasons come from the recipe's facts.
    for req in t["embedding"]["requires"]:
        assert req in reason
    assert "torchvision is held to the cpu build of torch" in reason
    # audio: no torchaudio for a torch newer than its newest series; skipped with the reason.
    skipped = [w.message for w in plan.warnings if w.code == "model-type-skipped"]
    assert len(skipped) == 1 and skipped[0].startswith("audio:")
    assert t["audio"]["companion_latest"] in skipped[0]
    # What [all] would have pulled, and why each part of it is not taken.
    for extra in recipes.model_types["all_extras"]:
        assert f"{extra}" in reason.split("not [all] (= [", 1)[1]
    for why in recipes.model_types["not_from_all"].values():
        assert why.format(**recipes.engine("xinference")) in reason
    # The LLM engines are unchanged by the extra types.
    assert [b.name for b in plan.installs] == ["xinference", "transformers", "llama-cpp-python", "xllamacpp"]
    assert plan_for("linux-cpu-debian12-nvcc-no-cublas", ("llm",), recipes).installs[1:] == plan.installs[1:]


def test_default_is_llm_only_and_says_why_not_all(recipes):
    plan = plan_for("linux-h100-driver590", ("llm",), recipes)
    assert xinference_spec(plan).extras == {"transformers"}
    reason = plan.backend("xinference").reason
    assert "[embedding,rerank,image,video,audio] not asked for (--model-types)" in reason
    assert "not [vllm]/[sglang]" in reason


def test_audio_where_torch_is_capped_at_its_series(recipes):
    # torch <2.12 for sm_120 on driver 570 and torch==2.2.2 on Intel macOS: torchaudio exists for them.
    for name in ("linux-rtx5090-driver570", "macos-intel-i5"):
        plan = plan_for(name, ("llm", "audio"), recipes)
        assert "audio" in xinference_spec(plan).extras, name
        assert not [w for w in plan.warnings if w.code == "model-type-skipped"]


def test_no_xinference_each_type_skipped_with_why(recipes):
    plan = plan_for("centos7-glibc2.17-cpu", ("embedding", "rerank"), recipes)
    assert plan.backend("xinference").action == "skip"
    skipped = [w.message for w in plan.warnings if w.code == "model-type-skipped"]
    assert [m.split(":")[0] for m in skipped] == ["embedding", "rerank"]
    assert all("glibc" in m for m in skipped)


def test_without_llm_the_engines_are_left_out(recipes):
    plan = plan_for("linux-cpu-debian12-nvcc-no-cublas", ("embedding",), recipes)
    assert [b.name for b in plan.installs] == ["xinference"]
    assert xinference_spec(plan).extras == {"embedding"}
    assert plan.backend("llama-cpp-python").reason == "not asked for: --model-types has no llm"


def test_plan_round_trips_through_a_receipt(recipes):
    plan = plan_for("linux-cpu-debian12-nvcc-no-cublas", ("llm", "embedding"), recipes)
    again = plan_from_dict(json.loads(plan.to_json()))
    assert again.request.model_types == ("llm", "embedding")
    assert again.backend("xinference").packages == plan.backend("xinference").packages


@pytest.mark.slow
def test_recipe_matches_installed_xinference_metadata(recipes, engine_env):
    """The recipe's facts are the installed xinference's own Requires-Dist (importlib.metadata)."""
    done = subprocess.run(
        [
            str(engine_env["xinference"]),
            "-c",
            "import json; from importlib import metadata as m; "
            "print(json.dumps([m.version('xinference'), m.requires('xinference')]))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    version, requires = json.loads(done.stdout)
    assert version == recipes.model_types["for_version"] == recipes.engine("xinference")["version"]
    by_extra: dict[str, set[str]] = {}
    for text in requires:
        r = Requirement(text)
        for extra in recipes.model_types["all_extras"]:
            if r.marker and r.marker.evaluate({"extra": extra, "sys_platform": "linux"}):
                by_extra.setdefault(extra, set()).add(str(Requirement(text.split(";")[0])))
    all_parts = {Requirement(t.split(";")[0]) for t in requires if 'extra == "all"' in t}
    assert sorted(next(iter(r.extras)) for r in all_parts) == sorted(recipes.model_types["all_extras"])
    for name, t in recipes.model_types["types"].items():
        if t["extra"]:
            assert {str(Requirement(r)) for r in t["requires"]} <= by_extra[t["extra"]], name


def test_cli_flag_and_bad_input():
    env = {k: v for k, v in os.environ.items() if k != "CMAKE_ARGS"}
    args = ["--profile", str(PROFILES / "linux-cpu-debian12-nvcc-no-cublas.json"), "--json"]
    done = subprocess.run(
        [sys.executable, "-m", "provision", "plan", "--auto", "--model-types", "llm,embedding,rerank", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert d["request"]["model_types"] == ["llm", "embedding", "rerank"]
    assert d["backends"][0]["packages"][0].startswith("xinference[transformers,embedding,rerank]==")
    for cmd in (["plan", "--auto"], ["install", "--auto", "--dry-run"]):
        bad = subprocess.run(
            [sys.executable, "-m", "provision", *cmd, "--model-types", "llm,speech", *args[:2]],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert bad.returncode == 2, bad.stderr
        assert bad.stderr.strip().splitlines() == [
            "xinfer-setup: unknown model type 'speech' (choose from llm, embedding, rerank, image, "
            "audio, video, or all)"
        ]
