"""The receipt accumulates: merge rules of provision.install.ledger, on receipts built in memory."""

from __future__ import annotations

import json
from pathlib import Path

from provision.install.ledger import drop_backend, merge_receipts
from provision.install.receipt import BackendRecord, EnvRecord, Receipt
from provision.plan import plan_from_dict

PROFILE = json.loads(
    (Path(__file__).parent / "profiles" / "linux-cpu-debian12-nvcc-no-cublas.json").read_text()
)


def _plan(backends: list[dict], envs: list[dict]) -> dict:
    return {
        "schema_version": 1,
        "profile": PROFILE,
        "request": {"backends": None},
        "torch": {"variant": "cpu", "index_url": None, "reason": "cpu"},
        "backends": backends,
        "environments": envs,
    }


def _decision(name: str, action: str = "install", env: str | None = "main", packages=()) -> dict:
    return {
        "name": name,
        "action": action,
        "reason": f"{name} reason",
        "environment": env,
        "packages": list(packages) or [f"{name}==1.0"],
        "version": "1.0",
    }


def _env(name: str, backends: list[str], reqs: list[str], torch: bool = True) -> dict:
    return {
        "name": name,
        "backends": backends,
        "requirements": reqs,
        "reason": "",
        "torch": {"variant": "cpu", "index_url": None, "reason": "cpu"} if torch else None,
    }


def _receipt(plan: dict, backends: list[BackendRecord], envs: list[EnvRecord]) -> Receipt:
    return Receipt(profile={}, plan=plan, installer="uv", environments=envs, backends=backends)


MAIN = EnvRecord("main", "/r/main", "/r/main/bin/python", packages=["a==1"])
AUTO = _receipt(
    _plan(
        [_decision("xinference"), _decision("transformers"), _decision("sglang", "skip", None)],
        [_env("main", ["xinference", "transformers"], ["xinference==1.0", "transformers==1.0"])],
    ),
    [
        BackendRecord("xinference", "installed", "main", "1.0"),
        BackendRecord("transformers", "installed", "main", "1.0"),
        BackendRecord("sglang", "skipped", None, reason="no GPU"),
    ],
    [MAIN],
)


def _always(rec, env) -> bool:
    return True


def test_a_skipped_explicit_backend_erases_nothing():
    run = _receipt(
        _plan([_decision("sglang", "skip", None)], [_env("main", [], [], torch=False)]),
        [BackendRecord("sglang", "skipped", None, reason="no GPU")],
        [],
    )
    merged = merge_receipts(AUTO, run, _always)
    assert {b.name: b.status for b in merged.backends} == {
        "xinference": "installed",
        "transformers": "installed",
        "sglang": "skipped",
    }
    assert [e.name for e in merged.environments] == ["main"]
    replay = plan_from_dict(merged.plan)
    assert {b.name for b in replay.installs} == {"xinference", "transformers"}


def test_a_new_backend_in_its_own_environment_is_added_and_the_plan_is_the_union():
    vllm_env = EnvRecord("vllm", "/r/vllm", "/r/vllm/bin/python", packages=["vllm==1.0"])
    run = _receipt(
        _plan([_decision("vllm", env="vllm")], [_env("vllm", ["vllm"], ["vllm==1.0"])]),
        [BackendRecord("vllm", "installed", "vllm", "1.0")],
        [vllm_env],
    )
    merged = merge_receipts(AUTO, run, _always)
    installed = [b.name for b in merged.backends if b.status == "installed"]
    assert installed == ["xinference", "transformers", "vllm"]
    assert [e.name for e in merged.environments] == ["main", "vllm"]
    replay = plan_from_dict(merged.plan)
    assert {e.name: e.backends for e in replay.environments} == {
        "main": ("xinference", "transformers"),
        "vllm": ("vllm",),
    }
    assert replay.request.backends == ("sglang", "transformers", "vllm", "xinference")


def test_a_backend_added_to_a_shared_environment_keeps_its_neighbours_requirements():
    main_after = EnvRecord("main", "/r/main", "/r/main/bin/python", packages=["a==1", "llama==1"])
    run = _receipt(
        _plan(
            [_decision("llama-cpp-python")],
            [_env("main", ["llama-cpp-python"], ["llama-cpp-python==1.0"], torch=False)],
        ),
        [BackendRecord("llama-cpp-python", "installed", "main", "1.0")],
        [main_after],
    )
    merged = merge_receipts(AUTO, run, _always)
    assert merged.environment("main").packages == ["a==1", "llama==1"]
    env = plan_from_dict(merged.plan).environment("main")
    assert env.backends == ("xinference", "transformers", "llama-cpp-python")
    assert set(env.requirements) == {"xinference==1.0", "transformers==1.0", "llama-cpp-python==1.0"}
    assert env.torch is not None and env.torch.variant == "cpu"  # the run planned none; the old one stays


def test_a_failed_attempt_replaces_the_record_and_a_rerun_replaces_it_again():
    failed = _receipt(
        _plan([_decision("transformers")], [_env("main", ["transformers"], [])]),
        [BackendRecord("transformers", "failed", "main", reason="boom")],
        [MAIN],
    )
    merged = merge_receipts(AUTO, failed, _always)
    assert merged.backend("transformers").status == "failed"
    assert merged.backend("xinference").status == "installed"


def test_an_old_record_no_longer_on_disk_is_dropped_with_a_note():
    run = _receipt(
        _plan([_decision("sglang", "skip", None)], []), [BackendRecord("sglang", "skipped", None)], []
    )
    merged = merge_receipts(AUTO, run, lambda rec, env: rec.name != "transformers")
    assert merged.backend("transformers") is None
    assert any("transformers" in n and "no longer there" in n for n in merged.notes)
    assert "transformers" not in plan_from_dict(merged.plan).environment("main").backends


def test_drop_backend_removes_record_plan_entry_and_a_dedicated_environment():
    vllm_env = EnvRecord("vllm", "/r/vllm", "/r/vllm/bin/python")
    both = merge_receipts(
        AUTO,
        _receipt(
            _plan([_decision("vllm", env="vllm")], [_env("vllm", ["vllm"], ["vllm==1.0"])]),
            [BackendRecord("vllm", "installed", "vllm", "1.0")],
            [vllm_env],
        ),
        _always,
    )
    dropped = drop_backend(both, "vllm", env_gone=True, env_after=None)
    assert dropped.backend("vllm") is None and dropped.environment("vllm") is None
    plan = plan_from_dict(dropped.plan)
    assert plan.backend("vllm") is None and plan.environment("vllm") is None
    kept = drop_backend(both, "transformers", env_gone=False, env_after=MAIN)
    assert plan_from_dict(kept.plan).environment("main").backends == ("xinference",)


def test_first_receipt_is_the_run_itself():
    assert merge_receipts(None, AUTO, _always) is AUTO
