"""Xinference built-in names from the registry inside the installed Xinference, and our memory
estimate against Xinference's own estimator (`xinference cal-model-mem`) in that install."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import cli
from tests.test_serve_cli import serve_root  # noqa: F401 - the fixture

FIX = Path(__file__).parent / "fixtures" / "models"
PROFILES = Path(__file__).parent / "profiles"

pytestmark = pytest.mark.slow  # the session's real install (or XINFER_TEST_ENGINE_PYTHON)


def _dry(root: Path, *args: str):
    return cli("serve", *args, "--venv", str(root), "--dry-run", "--json", timeout=120)


def _one_line_error(done, code: int, text: str) -> None:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], done.stderr


def test_built_in_name_unquantized_when_it_fits(serve_root):  # noqa: F811
    done = _dry(
        serve_root,
        "qwen2.5-instruct",
        "--size",
        "7",
        "--profile",
        str(PROFILES / "linux-h100-driver590.json"),
    )
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert d["source"] == "xinference-registry" and d["served_name"] == "qwen2.5-instruct"
    assert (d["format"], d["quantization"], d["model"]) == ("pytorch", "none", "Qwen/Qwen2.5-7B-Instruct")
    assert d["engine"] == "vllm" and d["memory"]["fits"] and d["memory"]["context_length"] == 32768


def test_built_in_name_picks_the_best_spec_that_fits(serve_root):  # noqa: F811
    # 32B on a 24 GB card: not bf16 (61 GiB), not 8-bit (35 GiB): a 4-bit spec.
    d = json.loads(
        _dry(
            serve_root,
            "qwen2.5-instruct",
            "--size",
            "32",
            "--profile",
            str(PROFILES / "linux-rtx4090-driver550.json"),
        ).stdout
    )
    assert d["quantization"] == "Int4" and d["format"] in ("gptq", "awq") and d["memory"]["fits"]
    assert "context lowered" in d["reason"]
    # A CPU with 31 GiB: Mixtral only as a GGUF.
    d = json.loads(
        _dry(
            serve_root, "mixtral-instruct-v0.1", "--profile", str(PROFILES / "linux-graviton3-cpu.json")
        ).stdout
    )
    assert d["format"] == "ggufv2" and d["memory"]["fits"]
    assert d["engine"] in ("xllamacpp", "llama-cpp-python")
    # Four H100s: the unquantized 70B, spanning them.
    d = json.loads(
        _dry(
            serve_root,
            "llama-3.1-instruct",
            "--size",
            "70",
            "--profile",
            str(PROFILES / "linux-4x-h100-driver590.json"),
        ).stdout
    )
    assert (d["format"], d["quantization"], d["memory"]["devices"]) == ("pytorch", "none", 4)


def test_built_in_name_that_does_not_fit_prints_fits_false(serve_root):  # noqa: F811
    d = json.loads(
        _dry(
            serve_root,
            "qwen2.5-instruct",
            "--size",
            "72",
            "--format",
            "pytorch",
            "--profile",
            str(PROFILES / "linux-rtx4090-driver550.json"),
        ).stdout
    )
    assert d["memory"]["fits"] is False and d["memory"]["need_gib"] > d["memory"]["have_gib"]


def test_built_in_name_errors_list_what_exists(serve_root):  # noqa: F811
    _one_line_error(_dry(serve_root, "qwen2.5-instrct"), 2, "close names: qwen2.5-instruct")
    _one_line_error(_dry(serve_root, "qwen2.5-instruct"), 2, "pass --size (0.5, 1.5, 3, 7, 14, 32, 72)")
    _one_line_error(_dry(serve_root, "qwen2.5-instruct", "--size", "9"), 2, "has no size 9")
    _one_line_error(
        _dry(serve_root, "qwen2.5-instruct", "--size", "7", "--quantization", "Q9"),
        2,
        "(quantizations: none, Int4, Int8, q2_k",
    )


# ---------------------------------------------------------------- against cal-model-mem

# (registry name, size, our config fixture) at one context; cal-model-mem reads the registry's
# model_metadata, or, for specs without it, a config.json it would download into its cache.
REFERENCE = [
    ("llama-3-instruct", "8", "meta-llama--Meta-Llama-3-8B-Instruct"),
    ("llama-3.1-instruct", "70", "meta-llama--Llama-3.1-70B-Instruct"),
    ("qwen2.5-instruct", "32", "Qwen--Qwen2.5-32B-Instruct"),
    ("mixtral-instruct-v0.1", "46_7", "mistralai--Mixtral-8x7B-Instruct-v0.1"),
]
CONTEXT = 8192


def _cal_model_mem(python: Path, home: Path, name: str, size: str, config: Path) -> int | None:
    """Xinference's estimate in MiB, or None where it has none for the model."""
    cache = home / "cache" / "v2" / "model_mem" / f"{name}-pytorch-{size}b-none"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "config.json").write_text(config.read_text())
    done = subprocess.run(
        [
            str(python.parent / "xinference"),
            "cal-model-mem",
            "-n",
            name,
            "-s",
            size,
            "-f",
            "pytorch",
            "-q",
            "none",
            "-c",
            str(CONTEXT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "XINFERENCE_HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "PATH": "/usr/bin:/bin",
        },
    )
    m = re.search(r"total: (\d+) MB", done.stdout)
    if m is None:
        assert "not match" in done.stdout or "unavailable" in done.stderr, done.stdout + done.stderr
        return None
    return int(m.group(1))


def test_estimate_within_15_percent_of_cal_model_mem(serve_root, tmp_path):  # noqa: F811
    from provision.install.receipt import installed_backends
    from provision.serve.fit import Device, FitInput, Target, fit_model, load_fit_facts
    from provision.serve.sources import local_candidate

    python = installed_backends(serve_root)["xinference"].python
    facts = load_fit_facts()
    big = Target("cuda", (Device("any", 10_000.0, 0),))  # one device that holds anything: no lowering
    rows, compared = [], 0
    for name, size, fixture in REFERENCE:
        cand = local_candidate(FIX / "hf" / fixture)
        ours = fit_model(FitInput(cand.weights_bytes, cand.shape, "vllm", 2, 2, CONTEXT), big, facts)
        config = FIX / "hf" / fixture / "config.json"
        ref = _cal_model_mem(python, tmp_path / "xinference-home", name, size, config)
        ours_mib = ours.need_gib * 1024
        if ref is None:
            rows.append(f"| {fixture} | {ours_mib:.0f} | n/a (cal-model-mem has no estimate for it) | |")
            continue
        diff = (ours_mib - ref) / ref
        rows.append(f"| {fixture} | {ours_mib:.0f} | {ref} | {diff:+.1%} |")
        compared += 1
        assert abs(diff) <= 0.15, rows[-1]
    print("\n| model (context 8192) | ours (MiB) | cal-model-mem (MiB) | difference |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))
    assert compared >= 3
