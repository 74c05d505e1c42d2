"""plan --cache-key: the same line for the same install decision, another line when it changes."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from provision.bundle.cache_key import _recipes, cache_key
from provision.plan import plan_from_dict
from provision.profile import load_profile
from tests.support.cli import REPO, cli

H100 = REPO / "tests" / "profiles" / "linux-h100-driver590.json"
KEY = re.compile(r"^xinfer-setup-[0-9a-f]{64}$")


def _key(*args: str, env: dict[str, str] | None = None) -> str:
    done = cli("plan", *args, "--cache-key", env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and KEY.match(lines[0]), done.stdout
    return lines[0]


def test_stable_across_runs_and_changes_with_flags():
    first = _key("--auto")
    assert _key("--auto") == first  # a second probe of the same machine
    assert _key("--auto", "--portable") != first
    assert _key("--backend", "transformers") != first
    assert _key("--auto", env={"CMAKE_ARGS": "-DGGML_BLAS=ON"}) != first
    assert _key("--auto", "--profile", str(H100)) != first


def test_volatile_profile_fields_do_not_change_it(tmp_path: Path):
    data = json.loads(H100.read_text())
    base = _key("--auto", "--profile", str(H100))
    data["memory_mb"] = (data.get("memory_mb") or 1000) + 1
    data["os"]["release"] = "9.9.9-other-kernel"
    data["python"]["version"] = data["python"]["version"].rsplit(".", 1)[0] + ".99"
    data["cpu"]["cores"] = (data["cpu"].get("cores") or 1) * 2
    data["cpu"]["flags"] = list(data["cpu"].get("flags") or []) + ["hypervisor"]
    other = tmp_path / "same-machine-other-day.json"
    other.write_text(json.dumps(data))
    assert _key("--auto", "--profile", str(other)) == base
    data["cpu"]["flags"] = data["cpu"]["flags"] + ["avx512_fp16"]  # an ISA feature: native builds differ
    other.write_text(json.dumps(data))
    assert _key("--auto", "--profile", str(other)) != base


def test_changes_with_a_recipe_and_the_tool_version():
    done = cli("plan", "--auto", "--profile", str(H100), "--json")
    plan = plan_from_dict(json.loads(done.stdout))
    recipes = _recipes()
    assert "backends.toml" in recipes and "torch.toml" in recipes
    base = cache_key(plan, recipes)
    assert cache_key(plan, dict(recipes)) == base
    changed = {**recipes, "backends.toml": recipes["backends.toml"] + "\n# a comment is a change too\n"}
    assert cache_key(plan, changed) != base
    assert cache_key(plan, recipes, version="0.2.0") != base
    # The profile loaded again, and the plan made from it again, give the same key.
    assert load_profile(H100) == load_profile(H100)
    assert cache_key(replace(plan), recipes) == base


def test_cache_key_takes_no_json():
    done = cli("plan", "--auto", "--cache-key", "--json")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
