"""`xinfer-setup serve MODEL`: serve a model with the best engine here, or through Xinference.

MODEL is `tiny` (the built-in tiny model), a Hugging Face directory or a GGUF file. The
endpoint and model name go to stdout; progress and warnings to stderr. --dry-run --json
prints the decision and starts nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from provision.errors import UserError


@click.command()
@click.argument("model")
@click.option("--engine", default=None, metavar="NAME",
              help="vllm, sglang, transformers or llama.cpp (also llama-cpp-python, xllamacpp).")
@click.option("--via", type=click.Choice(["xinference"]), default=None,
              help="Serve through a local Xinference.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any non-loopback address is reachable from other machines.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port to listen on (default 8000 engine-native, 9997 via Xinference).")
@click.option("--api-key", default=None, help="Refuse requests without this bearer key (engine-native).")
@click.option("--venv", "venv_root", type=click.Path(path_type=Path), default=None,
              help="The --venv ROOT engines were installed under.")
@click.option("--profile", "profile_path", default=None,
              help="Decide as on the machine of this profile (--dry-run).")
@click.option("--dry-run", is_flag=True, help="Print the decision; start nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the decision as JSON.")
def serve(model, engine, via, host, port, api_key, venv_root, profile_path, dry_run, as_json):
    """Serve MODEL on an OpenAI-compatible endpoint until Ctrl-C."""
    from provision.serve.run import ServeRequest, decide
    from provision.serve.run import serve as run_serve

    if profile_path and not dry_run:
        raise UserError("--profile describes another machine: use it only with --dry-run")
    if as_json and not dry_run:
        raise UserError("--json prints the decision: use it with --dry-run")
    if api_key is not None and not api_key.strip():
        raise UserError("--api-key must not be empty")
    req = ServeRequest(model=model, engine=engine, via=via, host=host, port=port, api_key=api_key,
                       venv_root=venv_root, profile_path=profile_path)
    decision = decide(req)
    if dry_run:
        if as_json:
            click.echo(json.dumps({**decision.to_dict(), "via": via}, indent=2))
        else:
            click.echo(f"engine: {decision.choice.engine}{' via Xinference' if via else ''}")
            click.echo(f"reason: {decision.choice.reason}")
            click.echo(f"command: {' '.join(decision.command)}")
        return
    run_serve(req, decision, say=lambda line: click.echo(line, err=not _is_endpoint_line(line)))


def _is_endpoint_line(line: str) -> bool:
    return line.startswith(("OpenAI base URL:", "model:", "API key:"))
