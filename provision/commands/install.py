"""`xinfer-setup install` and `xinfer-setup verify`.

Progress for people goes to stderr; --json prints the receipt (or the dry-run report) on
stdout. Exit 0 only when every planned backend is installed and verified.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from provision.commands import options
from provision.commands.plan import MODEL_TYPES_HELP, check_request, plan_from_flags
from provision.errors import OperationFailed, UserError
from provision.install.receipt import Receipt
from provision.plan import plan_from_dict
from provision.redact import drop_masked_credentials, redact_obj
from provision.stopping import stops_cleanly_on_sigterm


def _check_flags(
    auto: bool, backends: tuple[str, ...], profile: str | None, dry_run: bool, from_receipt: str | None
) -> None:
    if from_receipt and (auto or backends or profile):
        raise UserError("--from-receipt replays a receipt's plan: it takes no --auto, --backend or --profile")
    if not from_receipt and not auto and not backends:
        raise UserError("say what to install: --auto, --backend NAME or --from-receipt FILE")
    if not from_receipt:
        check_request(auto, backends)


def _dry_run_report(plan, venv_root: Path | None) -> dict:
    from provision.install.envs import locate
    from provision.install.run import wheel_build_request
    from provision.install.wheelhouse import built_wheel

    locations = locate(plan, venv_root)
    backends = []
    for b in plan.backends:
        entry = {
            "name": b.name,
            "action": b.action,
            "environment": b.environment,
            "packages": list(b.packages),
            "reason": b.reason,
        }
        if b.action == "install" and b.build is not None:
            req = wheel_build_request(plan, b)
            wheel = built_wheel(req.key)
            entry.update(
                cmake_args=list(req.effective_args),
                wheelhouse_key=req.key,
                cached_wheel=str(wheel) if wheel else None,
            )
        backends.append(entry)
    return {
        "dry_run": True,
        "environments": [
            {
                "name": e.name,
                "prefix": str(locations[e.name].prefix),
                "python": str(locations[e.name].python),
                "exists": locations[e.name].python.exists(),
                "torch": e.torch.variant if e.torch else None,
                "requirements": list(e.requirements),
            }
            for e in plan.environments
        ],
        "backends": backends,
        "plan": plan.to_dict(),
    }


# Plan warnings that mean "install nothing here" (provision.planner.host_classes).
REFUSING_WARNINGS = ("rosetta",)


@options.command("install", "Environments, torch, engines, verify, receipt; a step already done is skipped.")
@options.auto()
@options.backend("Install this backend")
@options.profile(
    "Install for another machine's profile (its GPUs and driver) on this host, which must have the "
    "same OS, arch and Python minor and a glibc at least the target's."
)
@options.venv("Create the environments under ROOT (ROOT/main, ...).")
@click.option(
    "--installer", type=click.Choice(["uv", "pip"]), default=None, help="Default: uv, pip without uv."
)
@options.dry_run("Say what would be done; change nothing.")
@options.as_json("Print the receipt (or dry-run report) as JSON.")
@click.option("--from-receipt", metavar="FILE", help="Replay a receipt exactly (its plan and versions).")
@options.torch_index_url()
@click.option("--index-url", metavar="URL", help="Package index (replaces pip's configured one).")
@click.option("--find-links", multiple=True, metavar="DIR|URL", help="Extra wheel location (repeatable).")
@options.portable()
@click.option("--model-types", metavar="TYPES", help=MODEL_TYPES_HELP)
@click.option("--no-wait", is_flag=True, help="Fail (exit 1) instead of waiting when another run holds ROOT.")
@click.option(
    "--from-bundle", metavar="DIR", help="Install a bundle's plan from it alone, with no network (bundle -o)."
)
@options.pin()
@options.latest()
@stops_cleanly_on_sigterm
def install(
    auto,
    backends,
    profile_path,
    venv_root,
    installer,
    dry_run,
    as_json,
    from_receipt,
    torch_index_url,
    index_url,
    find_links,
    portable,
    model_types=None,
    no_wait=False,
    from_bundle=None,
    pins=(),
    latest=False,
):
    if from_receipt and (pins or latest):
        raise UserError("--from-receipt replays a receipt's versions: it takes no --pin or --latest")
    if from_bundle:
        _install_from_bundle(from_bundle, venv_root, installer, as_json, locals())
        return
    _check_flags(auto, backends, profile_path, dry_run, from_receipt)
    if from_receipt and model_types:
        raise UserError("--from-receipt replays a receipt's plan: it takes no --model-types")
    from provision.install.executor import choose_installer

    root = Path(venv_root).expanduser() if venv_root else None
    replay_pins: dict[str, list[str]] = {}
    replay_hashes: dict[str, dict[str, str]] = {}
    replayed_built_on: dict | None = None
    if from_receipt:
        from provision.install.receipt import read_receipt

        replayed = read_receipt(Path(from_receipt))
        plan = plan_from_dict(drop_masked_credentials(replayed.plan))
        built = {b.name for b in plan.backends if b.build is not None}
        replay_pins = {
            e.name: [p for p in e.packages if p.split("==")[0] not in built] for e in replayed.environments
        }
        replay_hashes = {b.name: dict(b.hashes) for b in replayed.backends if b.hashes}
        replayed_built_on = replayed.built_on
    else:
        plan = plan_from_flags(
            auto, backends, profile_path, torch_index_url, portable, model_types, pins, latest, index_url
        )
    if dry_run:
        report = _dry_run_report(plan, root)
        if as_json:
            click.echo(json.dumps(redact_obj(report), indent=2))
        else:
            for b in report["backends"]:
                where = f" -> {b['environment']}" if b["environment"] else ""
                click.echo(f"{b['action']:7} {b['name']}{where}: {' '.join(b['packages']) or b['reason']}")
            for e in report["environments"]:
                click.echo(f"env {e['name']}: {e['prefix']} ({'exists' if e['exists'] else 'to create'})")
        return
    refused = next((w.message for w in plan.warnings if w.code in REFUSING_WARNINGS), None)
    if refused is not None:  # a host the plan refuses as a whole (Rosetta): nothing is touched
        raise UserError(refused)
    builder = _target_builder(plan) if profile_path else None
    if from_receipt and replayed_built_on is not None:
        # The receipt's build was made on another host: its wheelhouse key is that host's.
        from provision.profile import profile_from_dict

        builder = profile_from_dict(replayed_built_on)
    from provision.install.last_root import remember

    remember(root)  # a later command without --venv names it when it finds nothing here
    named_but_skipped = any(b.name in backends and b.action == "skip" for b in plan.backends)
    if not from_receipt and not named_but_skipped:
        # The no-op re-run decides before the installer's own modules are even imported; an
        # installer matters only when something is installed, so only an explicit one is compared.
        from provision.install.noop import UNCHANGED_NOTE, unchanged_receipt
        from provision.lock import root_lock

        with root_lock(root, wait=not no_wait, say=lambda m: click.echo(f"xinfer-setup: {m}", err=True)):
            kept = unchanged_receipt(plan, root, installer)
        if kept is not None:
            click.echo(f"xinfer-setup: {UNCHANGED_NOTE}", err=True)
            if as_json:
                click.echo(json.dumps(kept.to_dict(), indent=2))
            _raise_unless_ok(kept)
            return
    from provision.install.pipconfig import read_index_config
    from provision.install.progress import Reporter
    from provision.install.run import InstallOptions, install_plan

    index = read_index_config().with_cli(index_url, tuple(find_links))
    options = InstallOptions(
        installer=choose_installer(installer),
        index=index,
        replay_pins=replay_pins,
        replay_hashes=replay_hashes,
        wait=not no_wait,
        builder=builder,
    )
    # A backend the user named is a promise to install it: one this host cannot run is a failure,
    # reported after the others are done. Under --auto a skip is information.
    impossible = [b for b in plan.backends if b.name in backends and b.action == "skip"]
    receipt: Receipt | None = None
    if plan.installs or not impossible:
        receipt = install_plan(plan, root, options.installer, options=options, reporter=Reporter())
    if as_json:
        report = (
            receipt.to_dict()
            if receipt
            else {
                "ok": False,
                "backends": [{"name": b.name, "status": "skipped", "reason": b.reason} for b in impossible],
            }
        )
        click.echo(json.dumps(report, indent=2))
    if impossible:
        raise OperationFailed("; ".join(f"{b.name}: {b.reason}" for b in impossible))
    assert receipt is not None
    _raise_unless_ok(receipt)


def _target_builder(plan):
    """This host's profile, when it can install for the plan's target; else exit 2 naming why."""
    from provision.install.target import glibc_floor_note, target_mismatches
    from provision.probe.host import probe_host

    host = probe_host()
    problems = target_mismatches(plan.profile, host)
    if problems:
        raise UserError("--profile: this host cannot install for the target: " + "; ".join(problems))
    note = glibc_floor_note(plan.profile, host)
    if note:
        click.echo(f"xinfer-setup: {note}", err=True)
    return host


def _install_from_bundle(bundle_dir: str, venv_root, installer, as_json: bool, flags: dict) -> None:
    """The bundle carries its plan: flags that would make another plan or use an index are refused."""
    given = {
        "--auto": flags.get("auto"),
        "--backend": flags.get("backends"),
        "--profile": flags.get("profile_path"),
        "--from-receipt": flags.get("from_receipt"),
        "--dry-run": flags.get("dry_run"),
        "--torch-index-url": flags.get("torch_index_url"),
        "--index-url": flags.get("index_url"),
        "--find-links": flags.get("find_links"),
        "--portable": flags.get("portable"),
        "--pin": flags.get("pins"),
        "--latest": flags.get("latest"),
    }
    clash = [name for name, value in given.items() if value]
    if clash:
        raise UserError(f"--from-bundle installs the bundle's own plan: it takes no {', '.join(clash)}")
    from provision.bundle.offline_install import install_from_bundle
    from provision.install.executor import choose_installer
    from provision.install.last_root import remember
    from provision.install.progress import Reporter

    root = Path(venv_root).expanduser() if venv_root else None
    remember(root)
    receipt = install_from_bundle(
        bundle_dir, root, choose_installer(installer), Reporter(), wait=not flags.get("no_wait")
    )
    if as_json:
        click.echo(json.dumps(receipt.to_dict(), indent=2))
    _raise_unless_ok(receipt)


def _record_verify(path: Path, findings: list[dict], venv_root) -> None:
    """verify's findings into the root's receipt, under its lock: `status` then shows what this run
    proved, and which deferred checks (a GPU host's) are still open."""
    import dataclasses

    from provision.install.receipt import read_receipt, write_receipt
    from provision.lock import root_lock

    with root_lock(Path(venv_root).expanduser() if venv_root else None, wait=True, say=lambda _m: None):
        receipt = read_receipt(path)
        by_backend: dict[str, list[dict]] = {}
        for f in findings:
            by_backend.setdefault(f["backend"], []).append({k: v for k, v in f.items() if k != "backend"})
        now = _now()
        backends = [
            dataclasses.replace(b, verify=[{"backend": b.name, **c} for c in by_backend[b.name]])
            if b.name in by_backend and b.status == "installed"
            else b
            for b in receipt.backends
        ]
        verified_envs = {b.environment for b in backends if b.name in by_backend}
        envs = [
            dataclasses.replace(e, verified_at=now) if e.name in verified_envs else e
            for e in receipt.environments
        ]
        write_receipt(dataclasses.replace(receipt, backends=backends, environments=envs), path.parents[2])


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _raise_unless_ok(receipt) -> None:
    bad = []
    for b in receipt.backends:
        if b.status == "failed":
            bad.append(f"{b.name} failed ({(b.reason or '').splitlines()[0][:200]})")
        elif b.status == "installed":
            bad += [f"{b.name}: {c['name']} ({c['detail'][:200]})" for c in b.verify if not c["ok"]]
    if bad:
        raise OperationFailed("not everything planned is installed and verified: " + "; ".join(bad))
    click.echo("xinfer-setup: every planned backend is installed and verified", err=True)


@options.command("verify", "Re-runs install's checks in every environment the receipt names.")
@options.venv()
@click.option("--receipt", "receipt_file", metavar="FILE", help="A receipt elsewhere than the default place.")
@options.as_json("Print the findings as JSON.")
def verify(venv_root, receipt_file, as_json):
    from provision.install.receipt import read_receipt, receipt_path
    from provision.install.verify_receipt import verify_receipt

    path = (
        Path(receipt_file)
        if receipt_file
        else receipt_path(Path(venv_root).expanduser() if venv_root else None)
    )
    if not path.exists():
        from provision.install.last_root import missing_venv_note

        note = "" if receipt_file or venv_root else missing_venv_note(None)
        raise UserError(
            f"no receipt at {path}: run `xinfer-setup install` first ({note or 'or pass --venv ROOT'})"
        )
    findings = verify_receipt(read_receipt(path))
    if as_json:
        click.echo(
            json.dumps(
                {"receipt": str(path), "ok": all(f["ok"] for f in findings), "checks": findings}, indent=2
            )
        )
    else:
        for f in findings:
            mark = "DEFERRED" if f.get("deferred") else "ok  " if f["ok"] else "FAIL"
            waits = f" (waits for {f['deferred']})" if f.get("deferred") else ""
            click.echo(f"{mark} {f['backend']}: {f['name']}: {f['detail']}{waits}")
    if receipt_file is None:
        _record_verify(path, findings, venv_root)
    failed = [f for f in findings if not f["ok"]]
    if failed:
        raise OperationFailed(
            f"verify: {len(failed)} check(s) failed, first: "
            f"{failed[0]['backend']}: {failed[0]['name']}: {failed[0]['detail'][:200]}"
        )
