"""`xinfer-setup smoke`: the tiny model on every installed engine, served and answered."""

from __future__ import annotations

import json
import signal
import tempfile
from pathlib import Path

import click

from provision.backends import check_known
from provision.commands import options
from provision.errors import NotInstalled, OperationFailed, UserError


def _installed_pythons(venv_root: Path | None) -> dict[str, Path]:
    """{backend: python of the environment it was installed into}, from the install receipt."""
    from provision.install.receipt import installed_backends

    return {name: b.python for name, b in installed_backends(venv_root).items()}


def _fmt(value: float | None, unit: str = "s", digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def render_table(report) -> str:
    rows = [("engine", "status", "load", "ready", "ttft", "tok/s", "rss", "hardware", "reason")]
    for r in report.results:
        rows.append(
            (
                r.backend,
                r.status,
                _fmt(r.load_s),
                _fmt(r.ready_s),
                _fmt(r.ttft_s, digits=3),
                _fmt(r.tokens_per_s, "", 1),
                _fmt(r.rss_mb, "MB", 0),
                r.hardware or "-",
                r.reason,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1] for row in rows
    ]
    for r in report.results:
        if r.status == "fail" and r.log_tail:
            lines.append(f"--- {r.backend}: last log lines ({r.log_path or 'probe'})")
            lines.extend("    " + x for x in r.log_tail.splitlines())
    for a in report.agreement:
        lines.append(f"agreement {a.left} ~ {a.right}: {a.status} ({a.reason})")
    compared = ", ".join(report.compared) or "none"
    lines.append(f"held to the float32 reference token for token: {compared}")
    for n in report.not_compared:
        lines.append(f"not compared token for token: {n.engine}: {n.reason}")
    m = report.model
    made = f"generated in {m['generate_s']:.2f}s" if m["generated"] else "from cache"
    lines.append(
        f"tiny model {m['key']}: HF dir {m['hf_bytes'] / 1e6:.2f} MB, "
        f"GGUF F32 {m['gguf_bytes'] / 1e6:.2f} MB, {made}"
    )
    lines.append(f"smoke total {report.total_s:.1f}s: {'PASS' if report.ok else 'FAIL'}")
    return "\n".join(lines)


def _raise_on_sigterm(signum, frame):
    # Turned into the same unwinding as Ctrl-C, so every server's process group is stopped.
    raise KeyboardInterrupt


@options.command("smoke", "Each engine loads, generates, serves, answers and stops.")
@options.venv("The --venv ROOT the engines were installed under.")
@options.backend("Only this backend", list_names=False)
@options.as_json("Print the report as JSON.")
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where tiny models are cached (default ~/.cache/xinfer-setup/models).",
)
def smoke(venv_root: str | None, backends: tuple[str, ...], as_json: bool, cache_dir: Path | None) -> None:
    from provision.engines.adapters import ADAPTERS

    root = Path(venv_root) if venv_root else None
    # Xinference itself is smoked too: the tiny model through its own engines.
    smoked = (*ADAPTERS, "xinference")
    check_known(backends, among=smoked)
    if root is not None and not root.is_dir():
        raise UserError(f"--venv {root}: no such directory")

    from provision.install.last_root import noted

    installed = {k: v for k, v in _installed_pythons(root).items() if k in smoked}
    if backends:
        missing = [b for b in backends if b not in installed]
        if missing:
            have = ", ".join(installed) or "none"
            raise noted(
                NotInstalled(f"backend {missing[0]!r} is not installed (installed engines: {have})"), root
            )
        installed = {b: installed[b] for b in backends}
    if not installed:
        raise noted(NotInstalled("no engine is installed here; run `xinfer-setup install` first"), root)

    from provision.probe import probe_host
    from provision.tiny_model import ensure_tiny_model
    from smoke.runner import EngineResult, run_smoke

    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        model = ensure_tiny_model(cache_dir)
        work_dir = Path(tempfile.mkdtemp(prefix="xinfer-smoke-"))
        profile = probe_host()
        report = run_smoke(installed, profile, model, work_dir)
        if not backends:
            # An engine that is not installed (never, or uninstalled since) is a skip with its reason;
            # one that cannot run here says why (SGLang on a CPU host), not how to install it.
            hint = f" --venv {root}" if root else ""

            def why_skipped(name: str) -> str:
                runnable, why = ADAPTERS[name].can_run(profile) if name in ADAPTERS else (True, "")
                if not runnable:
                    return f"not installed; {why}"
                return f"not installed (`xinfer-setup install --backend {name}{hint}`)"

            report.results += [
                EngineResult(name, "skip", why_skipped(name)) for name in smoked if name not in installed
            ]
            from smoke.model_types import installed_type_results  # embedding/rerank via Xinference

            report.results += installed_type_results(Path(venv_root) if venv_root else None, work_dir)
    finally:
        signal.signal(signal.SIGTERM, previous)

    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else render_table(report))
    if not report.ok:
        failed = [r.backend for r in report.results if r.status == "fail"]
        failed += [f"{a.left}~{a.right}" for a in report.agreement if a.status != "pass"]
        raise OperationFailed(f"smoke failed: {', '.join(failed)} (logs in {work_dir})")
