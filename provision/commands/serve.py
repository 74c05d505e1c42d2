"""`xinfer-setup serve MODEL`: serve a model with the best engine here, or through Xinference.

MODEL is `tiny` (the built-in tiny model), a Hugging Face directory or a GGUF file, a Hugging
Face id (owner/name: the local cache first, then the hub) or an Xinference built-in name
(from the installed Xinference's registry). The endpoint and model name go to stdout;
progress and warnings to stderr. --dry-run --json prints the decision and starts nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from provision.errors import UserError


def _gpus(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        out = tuple(int(p) for p in value.split(",") if p.strip())
    except ValueError:
        raise UserError(f"--gpus {value}: a comma-separated list of GPU indexes, e.g. 0,1") from None
    if not out or any(i < 0 for i in out) or len(set(out)) != len(out):
        raise UserError(f"--gpus {value}: a comma-separated list of distinct GPU indexes, e.g. 0,1")
    return out


@click.command()
@click.argument("model")
@click.option(
    "--engine",
    default=None,
    metavar="NAME",
    help="vllm, sglang, transformers or llama.cpp (also llama-cpp-python, xllamacpp).",
)
@click.option(
    "--via", type=click.Choice(["xinference"]), default=None, help="Serve through a local Xinference."
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; any non-loopback address is reachable from other machines.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port to listen on (default 8000 engine-native, 9997 via Xinference).",
)
@click.option(
    "--api-key",
    default=None,
    envvar="XINFER_SETUP_API_KEY",
    help="Refuse requests without this bearer key (engine-native). Also from XINFER_SETUP_API_KEY, "
    "which keeps it out of your shell history and ps.",
)
@click.option("--revision", default=None, help="Hugging Face id: the branch, tag or commit.")
@click.option("--size", default=None, help="Built-in name: the size in billions of parameters (7, 1.5).")
@click.option(
    "--format", "model_format", default=None, help="Built-in name: pytorch, awq, gptq, fp8, bnb or ggufv2."
)
@click.option("--quantization", default=None, help="Built-in name: none, Int4, Int8, Q4_K_M ...")
@click.option(
    "--max-model-len",
    type=click.IntRange(1, None),
    default=None,
    help="Context length (default: the model's own, lowered only as far as memory forces).",
)
@click.option("--gpus", default=None, metavar="0,1", help="Use only these NVIDIA GPUs.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    default=None,
    help="Override the dtype (default: the model's own where the GPU has it; float32 on CPU).",
)
@click.option(
    "--gpu-memory-fraction",
    type=click.FloatRange(0.05, 1.0),
    default=None,
    help="vLLM/SGLang: the share of each GPU to take (default: the engine's own).",
)
@click.option("--force", is_flag=True, help="Launch even when the estimate says it does not fit.")
@click.option(
    "--venv",
    "venv_root",
    type=click.Path(path_type=Path),
    default=None,
    help="The --venv ROOT engines were installed under.",
)
@click.option(
    "--profile", "profile_path", default=None, help="Decide as on the machine of this profile (--dry-run)."
)
@click.option("--dry-run", is_flag=True, help="Print the decision; start nothing, download no weights.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the decision as JSON.")
def serve(
    model,
    engine,
    via,
    host,
    port,
    api_key,
    revision,
    size,
    model_format,
    quantization,
    max_model_len,
    gpus,
    dtype,
    gpu_memory_fraction,
    force,
    venv_root,
    profile_path,
    dry_run,
    as_json,
):
    """Serve MODEL on an OpenAI-compatible endpoint until Ctrl-C."""
    import os

    # Read once; engines started from here must not inherit it (they get it through a 0600 file).
    os.environ.pop("XINFER_SETUP_API_KEY", None)
    from provision.serve.run import ServeRequest, decide
    from provision.serve.run import serve as run_serve

    if profile_path and not dry_run:
        raise UserError("--profile describes another machine: use it only with --dry-run")
    if as_json and not dry_run:
        raise UserError("--json prints the decision: use it with --dry-run")
    if api_key is not None and not api_key.strip():
        raise UserError("--api-key must not be empty")
    req = ServeRequest(
        model=model,
        engine=engine,
        via=via,
        host=host,
        port=port,
        api_key=api_key,
        venv_root=venv_root,
        profile_path=profile_path,
        revision=revision,
        size=size,
        model_format=model_format,
        quantization=quantization,
        max_model_len=max_model_len,
        gpus=_gpus(gpus),
        dtype=dtype,
        gpu_memory_fraction=gpu_memory_fraction,
        force=force,
        dry_run=dry_run,
    )
    decision = decide(req)
    from provision.serve.keys import shown

    fit = decision.planned.fit
    if dry_run:
        if as_json:
            out = {**decision.to_dict(), "via": via}
            if decision.api_key_flag:
                out["command"] = [*decision.command, decision.api_key_flag, "***"]
            click.echo(json.dumps(out, indent=2))
        else:
            click.echo(f"engine: {decision.choice.engine}{' via Xinference' if via else ''}")
            click.echo(f"reason: {decision.choice.reason}")
            click.echo(f"memory: {fit.reason}")
            click.echo(f"command: {shown(decision.command, decision.api_key_flag)}")
        return
    if not fit.fits and not force:
        raise UserError(f"{decision.served_name} {fit.reason}")
    run_serve(req, decision, say=lambda line: click.echo(line, err=not _is_endpoint_line(line)))


def _is_endpoint_line(line: str) -> bool:
    return line.startswith(("OpenAI base URL:", "model:", "API key:"))
