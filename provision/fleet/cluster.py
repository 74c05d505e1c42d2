"""Xinference's own cluster on the fleet: up (supervisor, auth, reachability both ways, workers,
optionally the tiny model answered through the supervisor), status (daemons, drift, models), down.

Facts of Xinference 4.1.0 this relies on (read in its installed source, deploy/cmdline.py,
deploy/worker.py, api/routers/admin.py, core/supervisor.py):
- `xinference-supervisor -H ADDR -p API_PORT --supervisor-port PORT` serves the REST API on
  API_PORT and the actor pool workers talk to on PORT (random when not given).
- `xinference-worker -e http://SUP:API_PORT -H ADDR --worker-port PORT` asks the supervisor's
  GET /v1/address (no auth) for the actor address, then registers; ADDR must be routable from
  the supervisor, which calls back into the worker's pool (and the model pools it starts).
- auth is on by default: first-run setup token in <XINFERENCE_HOME>/auth/auth.db,
  POST /v1/admin/setup, POST /token, POST /v1/admin/keys (provision.serve.xinference).
- GET /v1/workers (admin) lists each worker's address ("work-ip") and models.
- POST /v1/model_registrations/LLM takes "worker_ip" to register on one worker only; POST
  /v1/models takes "worker_ip" to launch there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from provision.errors import OperationFailed, UserError
from provision.fleet.ansible import PlayRun
from provision.fleet.health import cluster_failures
from provision.fleet.inventory import FleetHost
from provision.fleet.ops import Ctx, apply_run, facts, host_roots, new_report, timed
from provision.fleet.report import FleetReport

MODEL_NAME = "xinfer-tiny"
WORKERS_TIMEOUT_S = 90
XINFERENCE_ENV = {
    # Hosts reach no index: Xinference must use the engines we installed, not make per-model venvs.
    "XINFERENCE_ENABLE_VIRTUAL_ENV": "0",
    "XINFERENCE_DISABLE_METRICS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def installed_roots(ctx: Ctx, report: FleetReport) -> dict[str, str]:
    """Each reachable host's root, gathered now (up starts daemons: no cached root will do), after
    checking that `fleet install` has put the tool and Xinference there: a host without them is
    refused here, in one line, before up.yml runs anything."""
    raw: dict[str, dict] = {}
    found = facts(ctx, report, raw)
    missing = {n: d for n, d in raw.items() if not (d.get("tool") and d.get("xinference"))}
    if missing:
        first = next(iter(missing.values()))
        what = "tool/bin/python" if not first.get("tool") else "envs/main/bin/xinference-supervisor"
        raise UserError(
            f"fleet up: not installed on {', '.join(missing)} (no {first['root']}/{what}): "
            f"run `xinfer-setup fleet install -i {ctx.fleet.inventory}` first"
        )
    return {n: f.root for n, f in found.items()}


def host_settings(h: FleetHost, root: str, supervisor: FleetHost) -> dict[str, Any]:
    bindir = f"{root}/envs/main/bin"
    endpoint = f"http://{supervisor.address}:{supervisor.api_port}"
    return {
        "root": root,
        "address": h.address,
        "api_port": h.api_port,
        "supervisor_port": h.supervisor_port,
        "worker_port": h.worker_port,
        "user": h.service_user,
        "env": {**XINFERENCE_ENV, "XINFERENCE_HOME": f"{root}/xinference"},
        "supervisor_argv": [
            f"{bindir}/xinference-supervisor",
            "-H",
            h.address,
            "-p",
            str(h.api_port),
            "--supervisor-port",
            str(h.supervisor_port),
        ],
        "worker_argv": [
            f"{bindir}/xinference-worker",
            "-e",
            endpoint,
            "-H",
            h.address,
            "--worker-port",
            str(h.worker_port),
        ],
        "supervisor_targets": [
            f"supervisor-api={supervisor.address}:{supervisor.api_port}",
            f"supervisor={supervisor.address}:{supervisor.supervisor_port}",
        ],
        "model_src": "",
        "model_name": "",
    }


def write_private(path: Path, text: str) -> None:
    """0600 from the first byte."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def secrets_dir(ctx: Ctx) -> Path:
    d = ctx.dir / "secrets"
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    return d


def read_credentials(ctx: Ctx) -> dict[str, Any] | None:
    path = ctx.dir / "secrets" / "cluster.json"
    if not path.exists():
        return None
    path.chmod(0o600)
    return json.loads(path.read_text())


def stage_model(ctx: Ctx) -> Path:
    """The tiny model's GGUF (made here, offline) in a directory of its own, to push to a worker."""
    from provision.tiny_model import ensure_tiny_model

    tm = ensure_tiny_model()
    d = ctx.dir / "models" / MODEL_NAME
    d.mkdir(parents=True, exist_ok=True)
    dest = d / tm.gguf_path.name
    if not dest.exists() or dest.stat().st_size != tm.gguf_path.stat().st_size:
        shutil.copy2(tm.gguf_path, dest)
    return dest


def up_fleet(ctx: Ctx, model: str | None = None) -> FleetReport:
    report = new_report(ctx, "up")
    fleet = ctx.fleet
    sup = fleet.supervisor
    roots = installed_roots(ctx, report)
    live = [h for h in fleet.hosts if h.name in roots]
    xf_hosts = {h.name: host_settings(h, roots[h.name], sup) for h in live}
    target_worker = next((w for w in fleet.workers if w.name in roots), None)
    gguf = None
    if model and target_worker is not None:
        with timed(report, "model files"):
            gguf = stage_model(ctx)
        xf_hosts[target_worker.name].update(model_src=str(gguf.parent), model_name=MODEL_NAME)
    secrets_dir(ctx)
    extra = {
        "xf_hosts": xf_hosts,
        "xf_supervisor_url": fleet.endpoint,
        "xf_worker_targets": [
            f"{w.name}={w.address}:{w.worker_port}:refused-ok"
            for w in fleet.workers
            if w.name in roots and w.name != sup.name
        ],
    }
    with timed(report, "cluster"):
        run = ctx.play("up", extra, limit=[h.name for h in live])
    apply_run(report, run)
    # The supervisor's view of each worker's address (reach workers), per worker.
    sup_out = run.hosts.get(sup.name)
    for r in sup_out.data.get("xinfer: reach workers", {}).get("results", []) if sup_out else []:
        if not r["ok"]:
            report.fail(
                r["name"],
                f"the supervisor {sup.name} cannot reach {r['name']} at {r['target']} ({r['detail']})",
            )
    report.extra["supervisor"] = fleet.endpoint
    creds = read_credentials(ctx)
    key_file = None
    if creds is not None:
        key_file = secrets_dir(ctx) / "api-key"
        if not key_file.exists() or key_file.read_text().strip() != creds["api_key"]:
            write_private(key_file, creds["api_key"] + "\n")
        key_file.chmod(0o600)
    report.extra["api_key_file"] = str(key_file) if key_file else None
    for h in live:
        report.row(h.name).details["address"] = h.address
    if creds is None or report.row(sup.name).status in ("failed", "unreachable"):
        for w in fleet.workers:
            if w.name != sup.name:
                report.fail(w.name, f"no supervisor: {report.row(sup.name).reason or 'not started'}")
        return report
    api = _admin_api(fleet.endpoint, creds)
    started = [w for w in fleet.workers if report.row(w.name).status not in ("failed", "unreachable")]
    with timed(report, "workers registered"):
        registered = wait_workers(api, [w.address for w in started])
    for w in started:
        if w.address not in registered:
            report.fail(
                w.name,
                f"worker started at {w.address}:{w.worker_port} but did not register with "
                f"the supervisor at {fleet.endpoint} within {WORKERS_TIMEOUT_S} s",
            )
    report.extra["workers_registered"] = sorted(registered)
    if (
        model
        and gguf is not None
        and target_worker is not None
        and report.row(target_worker.name).status not in ("failed", "unreachable")
    ):
        with timed(report, "model launch"):
            uid = launch_tiny(api, gguf, target_worker, roots[target_worker.name])
        with timed(report, "chat"):
            answer = chat(fleet.endpoint, creds["api_key"], uid)
        report.extra["model"] = {
            "uid": uid,
            "worker": target_worker.name,
            "worker_address": target_worker.address,
            "answer": answer,
        }
    elif model:
        report.extra["model"] = None
        report.notes.append("model not launched: no worker is up")
    return report


def _admin_api(endpoint: str, creds: dict[str, Any]):
    from provision.serve.xinference import XinferenceApi

    api = XinferenceApi(endpoint)
    login = api.call("POST", "/token", {"username": creds["username"], "password": creds["password"]})
    api.token = login["access_token"]
    return api


def wait_workers(api, addresses: list[str]) -> set[str]:
    """Worker IPs the supervisor lists (its "work-ip" is ADDR:PORT), waiting up to WORKERS_TIMEOUT_S."""
    deadline = time.monotonic() + WORKERS_TIMEOUT_S
    seen: set[str] = set()
    while True:
        with contextlib.suppress(OperationFailed):
            info = api.call("GET", "/v1/workers") or []
            seen = {str(w.get("work-ip", "")).rsplit(":", 1)[0] for w in info}
        if all(a in seen for a in addresses) or time.monotonic() > deadline:
            return seen
        time.sleep(1)


def launch_tiny(api, gguf: Path, worker: FleetHost, root: str) -> str:
    """Register the tiny GGUF on one worker (its path there) and launch it there through the
    supervisor; a model already running under our uid is kept (a re-run changes nothing)."""
    from provision.serve.model_facts import inspect_model
    from provision.serve.xinference import custom_llm_family, launch_payload

    running = api.call("GET", "/v1/models") or {}
    models = running.get("data", running) if isinstance(running, dict) else running
    if any((m.get("id") if isinstance(m, dict) else m) == MODEL_NAME for m in models):
        return MODEL_NAME
    facts = dataclasses.replace(inspect_model(gguf), path=Path(root) / "models" / MODEL_NAME / gguf.name)
    family = custom_llm_family(facts, MODEL_NAME, None)
    with contextlib.suppress(OperationFailed):  # registered by an earlier run whose launch failed
        api.call("DELETE", f"/v1/model_registrations/LLM/{MODEL_NAME}")
    api.call(
        "POST",
        "/v1/model_registrations/LLM",
        {"model": json.dumps(family), "persist": False, "worker_ip": worker.address},
    )
    payload = {**launch_payload(MODEL_NAME, "xllamacpp", facts), "worker_ip": worker.address}
    return api.call("POST", "/v1/models", payload, timeout=600)["model_uid"]


def chat(endpoint: str, api_key: str, uid: str) -> str:
    """One chat through the supervisor's OpenAI endpoint, with the real openai client."""
    import openai

    client = openai.OpenAI(base_url=f"{endpoint}/v1", api_key=api_key, timeout=120, max_retries=0)
    try:
        out = client.chat.completions.create(
            model=uid, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
        )
    except openai.OpenAIError as e:
        raise OperationFailed(f"chat through the supervisor {endpoint} failed: {e}") from None
    text = out.choices[0].message.content
    if not text:
        raise OperationFailed(f"chat through the supervisor {endpoint}: an empty answer from {uid}")
    return text


def _play_on_roots(ctx: Ctx, command: str) -> tuple[FleetReport, PlayRun]:
    """A new report for `command`, and its playbook run on every host, given only its root."""
    report = new_report(ctx, command)
    roots = host_roots(ctx, report)
    with timed(report, command):
        run = ctx.play(command, {"xf_hosts": {n: {"root": r} for n, r in roots.items()}}, limit=list(roots))
    apply_run(report, run)
    return report, run


def down_fleet(ctx: Ctx) -> FleetReport:
    return _play_on_roots(ctx, "down")[0]


def status_fleet(ctx: Ctx) -> FleetReport:
    """Per host: daemons alive, receipt vs its plan, receipt vs peers of the same plan, models."""
    from provision.fleet.drift import drift_reasons

    report, run = _play_on_roots(ctx, "status")
    plans = json.loads((ctx.dir / "plans.json").read_text()) if (ctx.dir / "plans.json").exists() else {}
    receipts = {}
    for h in ctx.fleet.hosts:
        path = ctx.dir / "receipts" / f"{h.name}.json"
        if path.exists() and run.hosts.get(h.name) and run.hosts[h.name].ok:
            receipts[h.name] = json.loads(path.read_text())
    for name, reason in drift_reasons(plans, receipts).items():
        row = report.row(name)
        if row.status not in ("failed", "unreachable"):
            row.status, row.reason = "drift", reason
    workers: dict[str, Any] = {}
    listed: set[str] | None = None
    api_error = list_error = None
    creds = read_credentials(ctx)
    if creds is None:
        api_error = f"no credentials in {ctx.dir / 'secrets'}: `xinfer-setup fleet up` makes them"
    else:
        try:
            api = _admin_api(ctx.fleet.endpoint, creds)
        except OperationFailed as e:
            api_error = str(e)
        else:
            try:
                for w in api.call("GET", "/v1/workers") or []:
                    workers[str(w.get("work-ip", "")).rsplit(":", 1)[0]] = sorted(w.get("models") or {})
                listed = set(workers)
            except OperationFailed as e:
                list_error = str(e)
                report.notes.append(f"the supervisor could not list its workers: {e}")
    daemons: dict[str, dict[str, Any]] = {}
    for h in ctx.fleet.hosts:
        o = run.hosts.get(h.name)
        if o is not None and o.ok and "xinfer: status" in o.data:
            daemons[h.name] = o.data["xinfer: status"].get("roles", {})
    failures = cluster_failures(ctx.fleet, daemons, listed, api_error, list_error)
    for h in ctx.fleet.hosts:
        row = report.row(h.name)
        roles = daemons.get(h.name, {})
        row.details["daemons"] = {r: d["alive"] for r, d in roles.items()}
        row.details["plan_id"] = (plans.get(h.name) or {}).get("plan_id")
        if h.is_worker:
            row.details["worker_registered"] = h.address in workers
            row.details["models"] = workers.get(h.address)
        if h.name in failures:
            report.fail(h.name, failures[h.name])
        if row.status == "unchanged":
            row.status = "ok"
    report.extra["supervisor"] = ctx.fleet.endpoint
    return report
