"""`xinfer-setup plan`: decide what to install on this machine (or a profiled one), and why."""

from __future__ import annotations

import json
import os

import click

from provision.backends import check_known
from provision.commands import options
from provision.commands.options import TORCH_INDEX_ENV
from provision.errors import OperationFailed, UserError
from provision.plan import PlanRequest
from provision.planner.model_types import parse_model_types
from provision.redact import redact, redact_obj

MODEL_TYPES_HELP = "Xinference model types: llm,embedding,rerank,image,audio,video or all (default: llm)."


def check_request(auto: bool, backends: tuple[str, ...]) -> None:
    if auto and backends:
        raise UserError("--auto and --backend contradict each other: use one")
    if not auto and not backends:
        raise UserError("say what to plan: --auto (every backend) or --backend NAME (repeatable)")
    check_known(backends)


def request_from_flags(
    auto: bool,
    backends: tuple[str, ...],
    torch_index_url: str | None,
    portable: bool,
    environ=os.environ,
    model_types: str | None = None,
) -> PlanRequest:
    base = torch_index_url or environ.get(TORCH_INDEX_ENV) or None
    if base is not None and not base.startswith(("http://", "https://", "file:")):
        raise UserError(f"--torch-index-url {base!r} is not an http(s):// or file: URL")
    return PlanRequest(
        backends=None if auto else tuple(backends),
        torch_index_base=base,
        user_cmake_args=environ.get("CMAKE_ARGS") or None,
        portable_cpu=portable,
        model_types=parse_model_types(model_types),
    )


def plan_from_flags(
    auto: bool,
    backends: tuple[str, ...],
    profile_path: str | None,
    torch_index_url: str | None,
    portable: bool,
    model_types: str | None = None,
):
    """The plan the command-line flags ask for (plan and install share it): checked, profiled, made."""
    check_request(auto, backends)
    request = request_from_flags(auto, backends, torch_index_url, portable, model_types=model_types)
    if profile_path:
        from provision.profile import load_profile

        profile = load_profile(profile_path)
    else:
        from provision.probe import probe_host

        profile = probe_host()
    from provision.planner import load_recipes, make_plan

    return make_plan(profile, request, load_recipes())


@options.command("plan", "CMAKE_ARGS in the environment reach llama-cpp-python's build.")
@options.auto()
@options.backend("Plan this backend")
@options.profile("Plan for this host profile instead of probing.")
@options.as_json("Print the plan (schema v1) as JSON.")
@click.option(
    "--resolve",
    "resolve",
    is_flag=True,
    help="Check every environment with a real resolver for the target platform.",
)
@options.torch_index_url()
@options.portable()
@click.option("--model-types", metavar="TYPES", help=MODEL_TYPES_HELP)
@click.option("--cache-key", "cache_key", is_flag=True, help="Print one stable line for CI caches.")
def plan(
    auto, backends, profile_path, as_json, resolve, torch_index_url, portable, cache_key, model_types=None
):
    if cache_key and (as_json or resolve):
        raise UserError("--cache-key prints one line: it takes no --json or --resolve")
    the_plan = plan_from_flags(auto, backends, profile_path, torch_index_url, portable, model_types)
    if cache_key:
        from provision.bundle.cache_key import cache_key as key_of

        click.echo(key_of(the_plan))
        return
    report = None
    if resolve:
        from provision.planner.resolve import resolve_plan

        report = resolve_plan(the_plan)
    if as_json:
        d = the_plan.to_dict()
        if report is not None:
            d["resolution"] = report.to_dict()
        click.echo(json.dumps(redact_obj(d), indent=2))
    else:
        from provision.planner.render import render_plan

        click.echo(redact(render_plan(the_plan)))
        if report is not None:
            click.echo("")
            click.echo(report.render())
    if report is not None and not report.ok:
        raise OperationFailed(f"plan --resolve: {report.summary()}")
