"""`plan --pin NAME==VERSION` / `--latest`: a release the recipes do not hold, resolved live from a
local index on 127.0.0.1 (real tiny wheels, real uv), and the recipes' age in every plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

from provision.planner.freshness import freshness
from tests.support.fake_index import build_wheels, serve_index
from tests.test_refresh_recipes import CLOSURE, TCONFLICT, VLLM_033, VLLM_034, VLLM_034_CONFLICT

PROFILES = Path(__file__).parent / "profiles"
H100 = str(PROFILES / "linux-h100-driver590.json")


def plan(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CMAKE_ARGS", "XINFER_SETUP_TORCH_INDEX_URL")}
    return subprocess.run(
        [sys.executable, "-m", "provision", "plan", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_pin_plans_a_newer_release_with_its_re_derived_facts(tmp_path):
    wheels = build_wheels([*CLOSURE, VLLM_033, VLLM_034], tmp_path / "wheels")
    with serve_index(wheels) as (index, _):
        done = plan(
            "--backend", "vllm", "--profile", H100, "--pin", "vllm==0.34.0", "--index-url", index, "--json"
        )
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    vllm = next(b for b in d["backends"] if b["name"] == "vllm")
    assert vllm["action"] == "install" and vllm["version"] == "0.34.0"
    assert vllm["packages"] == ["vllm==0.34.0"]
    env = next(e for e in d["environments"] if e["name"] == "vllm")
    # torch 2.15.0 (vllm 0.34.0's Requires-Dist), the CUDA 13.2 build its nvidia-cuda-runtime says.
    assert env["torch"]["version_spec"] == "==2.15.0"
    assert env["torch"]["variant"] == "cu132"
    assert "torch==2.15.0" in vllm["reason"]
    live = [m for m, c in zip(d["warnings"], d["warning_codes"], strict=True) if c == "live-pin"]
    assert len(live) == 1, d["warnings"]
    assert f"vllm 0.34.0 resolved live from {index}" in live[0]
    assert "torch 2.14.0 -> 2.15.0" in live[0] and "python_min 3.11 -> 3.12" in live[0]
    assert "torch_variant cu130 -> cu132" in live[0]
    assert "assumed from recipes/backends.toml" in live[0] and "sm_min" in live[0]


def test_pin_of_a_release_that_cannot_be_planned_is_refused_naming_the_conflict(tmp_path):
    wheels = build_wheels([*CLOSURE, VLLM_033, VLLM_034_CONFLICT, TCONFLICT], tmp_path / "wheels")
    with serve_index(wheels) as (index, _):
        done = plan("--backend", "vllm", "--profile", H100, "--pin", "vllm==0.34.0", "--index-url", index)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert "--pin vllm==0.34.0 cannot be planned" in done.stderr and "tconflict" in done.stderr


def test_pin_of_a_version_the_index_lacks_is_refused(tmp_path):
    wheels = build_wheels([*CLOSURE, VLLM_033], tmp_path / "wheels")
    with serve_index(wheels) as (index, _):
        done = plan("--backend", "vllm", "--profile", H100, "--pin", "vllm==0.99.0", "--index-url", index)
    assert done.returncode == 2 and "vllm 0.99.0 is not on" in done.stderr


def test_latest_takes_the_newest_release_on_the_index(tmp_path):
    wheels = build_wheels([*CLOSURE, VLLM_033, VLLM_034], tmp_path / "wheels")
    with serve_index(wheels) as (index, _):
        done = plan("--backend", "vllm", "--profile", H100, "--latest", "--index-url", index, "--json")
    assert done.returncode == 0, done.stderr
    vllm = next(b for b in json.loads(done.stdout)["backends"] if b["name"] == "vllm")
    assert vllm["version"] == "0.34.0"


def test_bad_pins_are_one_line_errors_before_any_network():
    for args, text in [
        (("--pin", "vllm"), "write it as NAME==VERSION"),
        (("--pin", "nope==1.0"), "unknown backend 'nope'"),
        (("--pin", "vllm==not-a-version"), "is not a version"),
        (("--pin", "sglang==0.6"), "not planned here (add --backend sglang)"),
        (("--pin", "vllm==0.34.0", "--index-url", "ftp://x"), "is not an http(s)://"),
    ]:
        done = plan("--backend", "vllm", "--profile", H100, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert text in done.stderr and len(done.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- how old the recipes are


def test_freshness_rule():
    meta = {
        "stale_after_days": 45,
        "index": "https://pypi.org/simple",
        "derived_at": {"a": date(2026, 11, 1), "b": date(2026, 12, 1)},
    }
    fresh = freshness(meta, date(2026, 12, 16))
    assert fresh is not None and fresh.oldest_backends == ("a",) and fresh.age_days == 45
    assert not fresh.stale and fresh.warning() is None
    stale = freshness(meta, date(2026, 12, 17))
    assert stale is not None and stale.stale
    warning = stale.warning()
    assert warning is not None and warning.code == "recipes-stale" and "46 days old" in warning.message
    assert freshness({"derived_at": {}}, date(2026, 12, 17)) is None
    assert freshness({"derived_at": {"a": date(2026, 11, 1)}}, date(2026, 12, 17)) is None  # no threshold


def test_every_plan_says_how_old_its_facts_are():
    import tomllib

    from tests.support.cli import REPO

    meta = tomllib.loads((REPO / "recipes" / "backends.toml").read_text())["meta"]
    oldest = min(meta["derived_at"].values())
    age = (date.today() - oldest).days
    done = plan("--auto", "--profile", H100)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # the line is wrapped like the rest of the plan
    assert f"recipes: facts derived from https://pypi.org/simple on {oldest.isoformat()}" in text
    assert f"{age} days ago" in text
    stale = age > meta["stale_after_days"]
    assert ("[recipes-stale]" in text) is stale
    d = json.loads(plan("--auto", "--profile", H100, "--json").stdout)
    assert d["recipes"]["age_days"] == age and d["recipes"]["stale"] is stale
    # The CI cache key does not move with the calendar.
    key = plan("--auto", "--profile", H100, "--cache-key").stdout
    assert "recipes" not in key and len(key.strip().splitlines()) == 1


def test_pin_through_a_credentialed_index_without_range_support(tmp_path):
    """Basic auth from the URL's userinfo (urllib cannot open user:pw@host), the whole wheel read
    when the index ignores Range, and the password in no output."""
    from tests.support.auth_index import auth_index
    from tests.support.cli import TEST_SECRETS, assert_no_secret

    wheels = build_wheels([*CLOSURE, VLLM_033, VLLM_034], tmp_path / "wheels")
    with auth_index(wheels, "user", TEST_SECRETS[0]) as (base, log):
        index = base.replace("http://", f"http://user:{TEST_SECRETS[0]}@")
        done = plan("--backend", "vllm", "--profile", H100, "--pin", "vllm==0.34.0", "--index-url", index)
    assert done.returncode == 0, done.stderr
    assert_no_secret(done.stdout + done.stderr, "plan --pin output")
    assert "vllm 0.34.0 resolved live from http://127.0.0.1:" in " ".join(done.stdout.split())
    assert not any(entry.endswith(" 401") for entry in log if "/files/" in entry)


def test_install_dry_run_plans_the_pinned_release_from_its_index_url(tmp_path):
    """install's planning path takes --pin too, and reads releases from install's own --index-url."""
    wheels = build_wheels([*CLOSURE, VLLM_033, VLLM_034], tmp_path / "wheels")
    with serve_index(wheels) as (index, _):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "provision",
                "install",
                "--backend",
                "vllm",
                "--profile",
                H100,
                "--dry-run",
            ]
            + ["--json", "--pin", "vllm==0.34.0", "--index-url", index, "--venv", str(tmp_path / "envs")],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    vllm = next(b for b in report["backends"] if b["name"] == "vllm")
    assert vllm["packages"] == ["vllm==0.34.0"]
    assert not (tmp_path / "envs").exists()  # a dry run changes nothing


def test_a_plan_made_past_the_threshold_carries_the_stale_warning():
    """The wiring plan uses, on a day past stale_after_days (the clock is the caller's)."""
    from provision.commands.plan import _with_freshness
    from provision.plan import PlanRequest
    from provision.planner import load_recipes, make_plan
    from provision.profile import load_profile

    the_plan = make_plan(load_profile(H100), PlanRequest(), load_recipes())
    later, fresh = _with_freshness(the_plan, today=date(2030, 1, 1))
    assert fresh is not None and fresh.stale
    assert later.warnings[-1].code == "recipes-stale" and "days old" in later.warnings[-1].message
    now, _ = _with_freshness(the_plan, today=fresh.oldest)
    assert all(w.code != "recipes-stale" for w in now.warnings)
