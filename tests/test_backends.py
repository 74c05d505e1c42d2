"""The backend registry (recipes/backends.toml): one record per backend, and every table that
used to list backends by hand is now a view of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from provision import backends
from provision.errors import OperationFailed, UserError

ROOT = Path(__file__).resolve().parents[1]
PROFILES = Path(__file__).parent / "profiles"


def test_the_registry_lists_the_plan_backends_in_plan_order():
    expected = ("xinference", "transformers", "vllm", "sglang", "llama-cpp-python", "xllamacpp")
    assert backends.names()[: len(expected)] == expected  # a new backend goes after these
    assert len(set(backends.names())) == len(backends.names())
    for b in backends.registry():
        assert b.version and b.dist and b.import_check and b.disk_mb > 0
        assert b.environment in ("primary", "own")


def test_views_of_the_registry_agree_with_it():
    from provision.engines.adapters import ADAPTERS
    from provision.install.receipt import BACKEND_DISTS
    from provision.install.verify import IMPORT_CHECKS
    from provision.plan import BACKENDS
    from provision.serve.choice import ENGINE_ALIASES, XINFERENCE_ENGINE_NAMES

    reg = {b.name: b for b in backends.registry()}
    assert tuple(reg) == BACKENDS
    assert {n: b.dist for n, b in reg.items()} == BACKEND_DISTS
    assert {n: b.import_check for n, b in reg.items()} == IMPORT_CHECKS
    assert set(ADAPTERS) == {n for n, b in reg.items() if b.adapter}
    assert all(type(ADAPTERS[n]).__name__ == reg[n].adapter for n in ADAPTERS)
    assert {n: b.xinference_engine for n, b in reg.items() if b.xinference_engine} == XINFERENCE_ENGINE_NAMES
    assert set(ENGINE_ALIASES) == set(ADAPTERS) | {"llama.cpp"}


def test_the_planner_puts_each_backend_where_its_environment_rule_says():
    """The engine-specific rules in planner/engines.py agree with the registry's environment."""
    from provision.plan import PRIMARY_ENV, PlanRequest
    from provision.planner import load_recipes, make_plan
    from provision.profile import load_profile

    plan = make_plan(load_profile(PROFILES / "linux-h100-driver590.json"), PlanRequest(), load_recipes())
    for b in plan.installs:
        rule = backends.backend(b.name).environment
        assert (b.environment == PRIMARY_ENV) == (rule == "primary"), b.name
    assert len(plan.installs) == len(backends.names())


def test_unknown_backend_is_one_error_with_one_wording():
    with pytest.raises(UserError, match=r"^unknown backend 'tensorrt' \(choose from xinference, trans"):
        backends.check_known(["vllm", "tensorrt"])
    with pytest.raises(UserError, match=r"^unknown backend 'xinference' \(choose from vllm\)$"):
        backends.check_known(["xinference"], among=["vllm"])
    with pytest.raises(UserError, match="unknown backend 'nope'"):
        backends.backend("nope")


@pytest.mark.parametrize(
    ("table", "what"),
    [
        (
            {
                "x": {
                    "version": "1",
                    "dist": "x",
                    "import_check": "import x",
                    "disk_mb": 1,
                    "needs_torch": False,
                }
            },
            "environment",
        ),
        (
            {
                "x": {
                    "dist": "x",
                    "import_check": "import x",
                    "disk_mb": 1,
                    "needs_torch": False,
                    "environment": "own",
                }
            },
            "version",
        ),
        (
            {
                "x": {
                    "version": "1",
                    "dist": "x",
                    "import_check": "import x",
                    "disk_mb": 1,
                    "needs_torch": False,
                    "environment": "shared",
                }
            },
            "environment must be one of primary, own",
        ),
        (
            {
                "x": {
                    "version": "1",
                    "dist": "x",
                    "import_check": "i",
                    "disk_mb": "lots",
                    "needs_torch": False,
                    "environment": "own",
                }
            },
            "lots",
        ),
    ],
)
def test_a_malformed_recipe_names_the_backend_and_the_entry(table, what):
    with pytest.raises(OperationFailed, match=r"recipes/backends\.toml \[x\]") as e:
        backends.recipes_from_table(table)
    assert what in str(e.value)


def test_engine_specific_facts_stay_with_the_planner_rules():
    vllm = backends.backend("vllm")
    assert vllm.rules["sm_min"] == 75 and "dist" not in vllm.rules
    assert (
        backends.backend("transformers").requirement
        == "transformers[serving]==" + backends.backend("transformers").version
    )


def test_recipes_are_read_from_a_source_checkout_without_install(tmp_path):
    """provision imported from the tree (no package-dir mapping) still finds recipes/."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from provision.backends import names; print(','.join(names()))"
    )
    argv = [sys.executable, "-I", "-S", "-c", code]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("xinference,transformers")


def _recipe(**kw):
    base = dict(
        name="newengine",
        version="1.2.3",
        dist="newengine",
        import_check="import newengine",
        disk_mb=100,
        environment="primary",
        needs_torch=False,
        extras=("server",),
    )
    return backends.BackendRecipe(**{**base, **kw})


@pytest.mark.parametrize(
    ("profile", "recipe", "action", "environment", "reason"),
    [
        ("linux-h100-driver590", _recipe(), "install", "main", "newengine 1.2.3, as recipes/backends.toml"),
        (
            "linux-h100-driver590",
            _recipe(environment="own", needs_torch=True),
            "install",
            "newengine",
            "pins",
        ),
        ("linux-8x-a100-driver450", _recipe(python_min="3.10"), "skip", None, "needs Python >= 3.10"),
        (
            "centos7-glibc2.17-cpu",
            _recipe(needs_torch=True),
            "skip",
            None,
            "requires torch, and torch wheels",
        ),
    ],
)
def test_a_backend_without_its_own_rule_installs_its_recipe_pin(profile, recipe, action, environment, reason):
    from provision.planner import load_recipes
    from provision.planner.engines import decide_pinned
    from provision.planner.torch_choice import choose_torch
    from provision.profile import load_profile

    p = load_profile(PROFILES / f"{profile}.json")
    recipes = load_recipes()
    torch = choose_torch(p, recipes, recipes.torch.index_base).choice
    out = decide_pinned(p, recipes, recipe, torch)
    assert (out.backend.action, out.backend.environment) == (action, environment)
    assert reason in out.backend.reason + out.env_reason
    if action == "install":
        assert out.backend.packages == ("newengine[server]==1.2.3",)
        assert (out.torch is not None) == (recipe.environment == "own")


def test_a_table_without_dist_is_planner_facts_not_a_backend():
    tables = {
        "a": {
            "version": "1",
            "dist": "a",
            "import_check": "import a",
            "disk_mb": 1,
            "environment": "primary",
            "needs_torch": False,
        },
        "a-cpu": {"distribution": "a-cpu", "version": "2"},
    }
    assert [b.name for b in backends.recipes_from_table(tables)] == ["a"]


@pytest.mark.parametrize(
    "command",
    [
        ("plan", "--profile", str(PROFILES / "linux-graviton3-cpu.json")),
        ("install", "--dry-run"),
        ("uninstall", "--venv", "ROOT"),
        ("smoke", "--venv", "ROOT"),
    ],
)
def test_every_command_refuses_an_unknown_backend_in_the_same_words(command, tmp_path):
    from tests.support.cli import cli

    done = cli(*(str(tmp_path) if a == "ROOT" else a for a in command), "--backend", "tensorrt")
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("xinfer-setup: unknown backend 'tensorrt' (choose from "), done.stderr
