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
    assert backends.names() == expected
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
        ({"x": {"version": "1", "dist": "x", "import_check": "import x", "disk_mb": 1, "needs_torch": False}},
         "environment"),
        ({"x": {"version": "1", "dist": "x", "import_check": "import x", "disk_mb": 1, "needs_torch": False,
                "environment": "shared"}}, "environment must be one of primary, own"),
        ({"x": {"version": "1", "dist": "x", "import_check": "i", "disk_mb": "lots", "needs_torch": False,
                "environment": "own"}}, "lots"),
    ],
)
def test_a_malformed_recipe_names_the_backend_and_the_entry(table, what):
    with pytest.raises(OperationFailed, match=r"recipes/backends\.toml \[x\]") as e:
        backends.recipes_from_table(table)
    assert what in str(e.value)


def test_engine_specific_facts_stay_with_the_planner_rules():
    vllm = backends.backend("vllm")
    assert vllm.rules["sm_min"] == 75 and "dist" not in vllm.rules
    assert backends.backend("transformers").requirement == "transformers[serving]==" + backends.backend(
        "transformers"
    ).version


def test_recipes_are_read_from_a_source_checkout_without_install(tmp_path):
    """provision imported from the tree (no package-dir mapping) still finds recipes/."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from provision.backends import names; print(','.join(names()))"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("xinference,transformers")
