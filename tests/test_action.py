"""action.yml: its `run:` steps, in order, in bash, the way a GitHub runner runs a composite action.

Each step gets fresh GITHUB_OUTPUT and the shared GITHUB_ENV file; what a step appends to
GITHUB_ENV is in the environment of the steps after it. `${{ inputs.* }}` is replaced by the
input (or its default); any other expression in a `run:` script fails the test, so the scripts
stay runnable outside GitHub. Steps that `uses:` another action (actions/cache,
actions/upload-artifact) are not run; their `${{ env.* }}` paths are checked to exist instead.

Backends: llama-cpp-python only, so the run costs the tool's venv, one engine from our
wheelhouse and its smoke, not another full install.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.cli import REPO, cli

pytestmark = pytest.mark.slow

EXPR = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")


def _substitute(text: str, inputs: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        expr = m.group(1)
        if not expr.startswith("inputs."):
            raise AssertionError(f"a run: script uses ${{{{ {expr} }}}}: only inputs.* are allowed there")
        return inputs[expr.split(".", 1)[1]]

    return EXPR.sub(one, text)


def _read_env_file(path: Path) -> dict[str, str]:
    """GITHUB_ENV / GITHUB_OUTPUT syntax: NAME=value lines and NAME<<DELIM ... DELIM blocks."""
    out: dict[str, str] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and "=" not in line.split("<<")[0]:
            name, delim = line.split("<<", 1)
            j = lines.index(delim, i + 1)
            out[name] = "\n".join(lines[i + 1 : j])
            i = j + 1
            continue
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
        i += 1
    return out


def _evaluate_env(text: str, env: dict[str, str]) -> str:
    return EXPR.sub(
        lambda m: env.get(m.group(1).split(".", 1)[1], "") if m.group(1).startswith("env.") else "", text
    )


def test_action_run_steps_in_order(tmp_path):
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    declared = action["inputs"]
    assert {"backends", "venv", "python"} <= set(declared)
    inputs = {k: str(v.get("default", "")) for k, v in declared.items()}
    inputs.update(backends="llama-cpp-python", venv=str(tmp_path / "envs"), python=sys.executable)

    runner_temp = tmp_path / "runner-temp"
    runner_temp.mkdir()
    github_env = tmp_path / "github_env"
    github_env.touch()
    base = {
        **os.environ,
        "RUNNER_TEMP": str(runner_temp),
        "GITHUB_ACTION_PATH": str(REPO),
        "GITHUB_ENV": str(github_env),
    }
    outputs: dict[str, dict[str, str]] = {}
    ran, skipped = [], []
    for i, step in enumerate(action["runs"]["steps"]):
        env = {**base, **_read_env_file(github_env)}
        if "uses" in step:
            skipped.append(step["uses"])
            for value in (step.get("with") or {}).values():
                for line in str(value).splitlines():
                    path = _evaluate_env(line, env).strip()
                    if path.startswith("/") and "runner.temp" not in line:
                        assert Path(path).parent.exists(), f"{step['name']}: {line} -> {path}"
            continue
        assert step.get("shell") == "bash", step["name"]
        script = tmp_path / f"step{i}.sh"
        script.write_text(_substitute(step["run"], inputs))
        out_file = tmp_path / f"output{i}"
        out_file.touch()
        # GitHub's bash: `bash --noprofile --norc -eo pipefail {0}`.
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            env={**env, "GITHUB_OUTPUT": str(out_file)},
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert done.returncode == 0, (
            f"step {step['name']!r} failed:\n{done.stderr[-3000:]}\n{done.stdout[-1000:]}"
        )
        ran.append(step["name"])
        if "id" in step:
            outputs[step["id"]] = _read_env_file(out_file)

    assert skipped == ["actions/cache@v4", "actions/upload-artifact@v4"]
    assert ran == ["Install xinfer-setup", "Plan and cache key", "Install", "Smoke test"]
    key = outputs["plan"]["cache-key"]
    assert re.fullmatch(r"xinfer-setup-[0-9a-f]{64}", key)
    assert cli("plan", "--backend", "llama-cpp-python", "--cache-key").stdout.strip() == key
    receipt = json.loads(Path(outputs["install"]["receipt"]).read_text())
    assert {b["name"]: b["status"] for b in receipt["backends"]}["llama-cpp-python"] == "installed"
    smoke = json.loads((runner_temp / "xinfer-smoke.json").read_text())
    assert smoke["ok"] is True, smoke
    status = {r["backend"]: r["status"] for r in smoke["engines"]}
    assert status.get("llama-cpp-python") == "pass", smoke["engines"]
    env = _read_env_file(github_env)
    assert Path(env["XINFER_WHEELHOUSE"]).is_dir(), "the wheelhouse the cache step saves does not exist"
