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
    pins: tuple[str, ...] = (),
    latest: bool = False,
    index_url: str | None = None,
):
    """The plan the command-line flags ask for (plan and install share it): checked, profiled, made.

    --pin/--latest: the asked releases' facts are derived live from the index
    (provision.planner.live_pins) and the plan says which were re-derived and which assumed."""
    check_request(auto, backends)
    request = request_from_flags(auto, backends, torch_index_url, portable, model_types=model_types)
    pinned = _check_pins(auto, backends, pins, index_url) if pins or latest else {}
    if profile_path:
        from provision.profile import load_profile

        profile = load_profile(profile_path)
    else:
        from provision.probe import probe_host

        profile = probe_host()
    from provision.planner import load_recipes, make_plan

    recipes = load_recipes()
    if not (pins or latest):
        return make_plan(profile, request, recipes)
    import dataclasses

    from provision.backends import names
    from provision.planner.live_pins import live_recipes
    from provision.planner.resolve import uv_binary

    planned = names() if auto else tuple(backends)
    latest_for = [n for n in planned if n not in pinned] if latest else []
    live = live_recipes(recipes, pinned, latest_for, index_url, uv_binary())
    the_plan = make_plan(profile, request, live.recipes)
    return dataclasses.replace(the_plan, warnings=the_plan.warnings + live.warnings)


def _check_pins(
    auto: bool, backends: tuple[str, ...], pins: tuple[str, ...], index_url: str | None
) -> dict[str, str]:
    from provision.backends import names
    from provision.planner.live_pins import parse_pins

    pinned = parse_pins(pins, names())
    outside = [n for n in pinned if not auto and n not in backends]
    if outside:
        raise UserError(f"--pin {outside[0]}: not planned here (add --backend {outside[0]})")
    if index_url is not None and not index_url.startswith(("http://", "https://", "file:")):
        raise UserError(f"--index-url {index_url!r} is not an http(s):// or file: URL")
    return pinned


def _with_freshness(the_plan, today=None):
    """(plan with a recipes-stale warning when the recipes are old, their Freshness or None)."""
    import dataclasses
    from datetime import date

    from provision.backends import backend_tables
    from provision.planner.freshness import freshness

    fresh = freshness(backend_tables().get("meta"), today or date.today())
    warning = fresh.warning() if fresh else None
    if warning is not None:
        the_plan = dataclasses.replace(the_plan, warnings=(*the_plan.warnings, warning))
    return the_plan, fresh


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
@options.pin()
@options.latest()
@click.option(
    "--index-url", metavar="URL", help="Index --pin and --latest read releases from (default: PyPI)."
)
def plan(
    auto,
    backends,
    profile_path,
    as_json,
    resolve,
    torch_index_url,
    portable,
    cache_key,
    model_types=None,
    pins=(),
    latest=False,
    index_url=None,
):
    if cache_key and (as_json or resolve):
        raise UserError("--cache-key prints one line: it takes no --json or --resolve")
    the_plan = plan_from_flags(
        auto, backends, profile_path, torch_index_url, portable, model_types, pins, latest, index_url
    )
    if cache_key:
        from provision.bundle.cache_key import cache_key as key_of

        click.echo(key_of(the_plan))
        return
    # After the cache key: the key must not change with the calendar.
    the_plan, fresh = _with_freshness(the_plan)
    report = None
    if resolve:
        from provision.planner.resolve import resolve_plan

        report = resolve_plan(the_plan)
    if as_json:
        d = the_plan.to_dict()
        if report is not None:
            d["resolution"] = report.to_dict()
        if fresh is not None:
            d["recipes"] = fresh.to_dict()
        click.echo(json.dumps(redact_obj(d), indent=2))
    else:
        from provision.planner.render import render_plan

        click.echo(redact(render_plan(the_plan)))
        if fresh is not None:
            import textwrap

            click.echo("")
            click.echo(redact(textwrap.fill(fresh.line(), 100, subsequent_indent="    ")))
        if report is not None:
            click.echo("")
            click.echo(report.render())
    if report is not None and not report.ok:
        raise OperationFailed(f"plan --resolve: {report.summary()}")
