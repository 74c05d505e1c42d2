"""Run inside an offline namespace: xinference-local with per-model virtualenvs ON, the tiny
model registered with a `virtualenv` block that needs a package the parent env lacks, launched
and asked once. Prints one JSON line (launch time, answer, the model's venv); exit 1 on failure.

    python -m tests.support.xinference_venv_offline XINFERENCE_PYTHON BUNDLE HOME PORT PACKAGE

Xinference 4.1.0 installs a virtualenv block's packages with uv into
$XINFERENCE_HOME/virtualenv/v4/<model>/<engine>/<python>; with the variables of
provision.bundle.xinference_offline_env they come from the bundle alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from provision.bundle.xinference_env import xinference_offline_env
from provision.serve.model_facts import inspect_model
from provision.serve.xinference import XinferenceApi, custom_llm_family, launch_payload, xinference_command


def _wait_up(root: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"xinference-local exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(root + "/v1/models", timeout=5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(1)
    raise RuntimeError(f"xinference-local not up after {timeout:.0f} s")


def main(python: str, bundle: str, home: str, port: str, package: str) -> int:
    from provision.tiny_model import ensure_tiny_model

    facts = inspect_model(ensure_tiny_model().hf_dir)
    home_p = Path(home)
    env = {
        **os.environ,
        "XINFERENCE_HOME": str(home_p),
        "XINFERENCE_ENABLE_VIRTUAL_ENV": "1",
        "XINFERENCE_AUTH_ADVANCED": "0",
        "XINFERENCE_DISABLE_METRICS": "1",
        **xinference_offline_env(bundle, home_p / "pip", python),
    }
    env_shown = {k: v for k, v in env.items() if k.startswith(("UV_", "XINFERENCE_VIRTUAL", "PIP_CONFIG"))}
    log = open(home_p / "server.log", "w")  # noqa: SIM115 (kept open for the server's life)
    proc = subprocess.Popen(
        xinference_command(Path(python), "127.0.0.1", int(port)), env=env, stdout=log, stderr=log
    )
    root = f"http://127.0.0.1:{port}"
    try:
        _wait_up(root, proc)
        api = XinferenceApi(root)
        family = custom_llm_family(facts, "tiny-offline", None)
        family["virtualenv"] = {"packages": [package]}
        api.call("POST", "/v1/model_registrations/LLM", {"model": json.dumps(family), "persist": False})
        started = time.monotonic()
        uid = api.call(
            "POST", "/v1/models", launch_payload("tiny-offline", "transformers", facts), timeout=600
        )["model_uid"]
        launch_s = time.monotonic() - started
        reply = api.call(
            "POST",
            "/v1/chat/completions",
            {"model": uid, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
            timeout=120,
        )
        venvs = sorted(str(p) for p in (home_p / "virtualenv").rglob("pyvenv.cfg"))
        print(json.dumps({"launch_s": round(launch_s, 1), "reply": reply, "venvs": venvs, "env": env_shown}))
        return 0
    except Exception as e:  # the caller wants the reason and the server's log tail
        tail = (home_p / "server.log").read_text(errors="replace")[-3000:]
        print(json.dumps({"error": str(e), "log_tail": tail}))
        return 1
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
