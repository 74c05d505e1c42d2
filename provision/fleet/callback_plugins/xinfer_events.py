# An Ansible stdout callback for `xinfer-setup fleet`: one progress line per host and step, and
# every task result as a JSON line in $XINFER_FLEET_EVENTS for the fleet report.
# Results of no_log tasks arrive censored from Ansible itself, so secrets never reach either.
from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: xinfer_events
    type: stdout
    short_description: per-host progress lines and JSON events for xinfer-setup fleet
    description:
        - One line per host and step on stdout; each result as JSON in $XINFER_FLEET_EVENTS.
"""

# Tasks whose name starts with this print one JSON object (provision.fleet.hostctl): it is kept.
DATA_PREFIX = "xinfer:"


def _parts(result):
    host = getattr(result, "host", None) or result._host
    task = getattr(result, "task", None) or result._task
    data = getattr(result, "result", None)
    if data is None:
        data = result._result
    return host.get_name(), task, data


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "xinfer_events"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        path = os.environ.get("XINFER_FLEET_EVENTS")
        self._events = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
        self._started = {}

    def _write(self, event):
        if self._events is not None:
            self._events.write(json.dumps(event, default=str) + "\n")
            self._events.flush()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._started[task._uuid] = time.monotonic()

    def _record(self, result, status):
        host, task, data = _parts(result)
        name = task.get_name()
        took = time.monotonic() - self._started.get(task._uuid, time.monotonic())
        event = {
            "host": host,
            "task": name,
            "status": status,
            "changed": bool(data.get("changed")),
            "seconds": round(took, 2),
        }
        payload = None
        if name.startswith(DATA_PREFIX) and isinstance(data.get("stdout"), str) and data["stdout"].strip():
            try:
                payload = json.loads(data["stdout"].strip().splitlines()[-1])
            except ValueError:
                payload = None
        if payload is not None:
            event["data"] = payload
            if payload.get("changed") is not None:
                event["changed"] = bool(payload["changed"])
        if status in ("failed", "unreachable"):
            event["reason"] = self._reason(data, payload)
        self._write(event)
        shown = "changed" if status == "ok" and event["changed"] else status
        line = f"[{host}] {name.removeprefix(DATA_PREFIX).strip()}: {shown}"
        if event.get("reason"):
            line += f" ({event['reason'][:300]})"
        self._display.display(line)

    @staticmethod
    def _reason(data, payload):
        if payload and payload.get("reason"):
            return str(payload["reason"])
        if data.get("censored"):
            return "failed (output hidden: it may hold a secret)"
        # A changed_when/failed_when that could not be evaluated fails the task with no msg of its
        # own (ansible then says "Unknown error."): name the expression's error and what it read.
        for cond in ("changed_when_result", "failed_when_result"):
            if isinstance(data.get(cond), str):
                seen = str(data.get("stdout") or "").strip()[-300:]
                return f"{cond.removesuffix('_result')} failed: {data[cond][:300]} (stdout: {seen!r})"
        for key in ("msg", "stderr", "module_stderr", "stdout"):
            text = data.get(key)
            if text and str(text).strip():
                lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
                return " | ".join(lines[-3:])[-600:]
        return "failed"

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")

    def v2_runner_on_skipped(self, result):
        host, task, _ = _parts(result)
        self._write({"host": host, "task": task.get_name(), "status": "skipped", "changed": False})

    def v2_playbook_on_stats(self, stats):
        if self._events is not None:
            self._events.close()
            self._events = None
