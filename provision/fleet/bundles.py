"""One wheel set per distinct plan, made on the controller and pushed to every host of the group.

Hosts reach no package index, so everything a plan installs travels as wheels. Per environment
of the plan: the planned torch build is found the way install finds it (the variant's index, or
a `+variant` wheel in the configured find-links), the environment is resolved for the target's
platform and Python with the same index configuration install uses (`uv pip compile
--python-platform`, metadata only), and the pins are fetched with `pip download --no-deps`.
Source-built engines (llama-cpp-python) are left out, their declared requirements resolved in
their place: the build itself travels separately, once per wheelhouse key. Sdist-only
dependencies (recipes/resolve.toml) are built into wheels here (pure Python).

Kept under <fleet dir>/bundles/<plan id>/wheels and re-used while the pins do not change;
pushed as one tar (wheels.pack) so Ansible's checksum says whether a host needs it again.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name

from provision.errors import OperationFailed
from provision.fleet.wheels import HostFacts, _uv, download, pack, uv_platform
from provision.plan import Plan


@dataclass(frozen=True)
class GroupBundle:
    plan_id: str
    dir: Path  # the wheel directory
    tar: Path
    pins: tuple[str, ...]
    content_id: str  # changes when the wheel set does: a host unpacks each id once


def torch_pin(plan: Plan, env_name: str, facts: HostFacts) -> tuple[list[str], tuple[str, ...]]:
    """(requirements pinning the planned torch build, extra index URLs) for one environment."""
    from provision.install.pipconfig import read_index_config
    from provision.install.torch_source import resolve_torch_source

    env = plan.environment(env_name)
    if env is None or env.torch is None:
        return [], ()
    py_tag = f"cp{facts.python_minor[0]}{facts.python_minor[1]}"
    source = resolve_torch_source(
        env.torch.variant,
        env.torch.index_url,
        env.torch.version_spec or "",
        read_index_config().sources,
        py_tag,
        plan.profile.os.arch,
    )
    extra = (source.index_url,) if source.index_url else ()
    return [source.torch_requirement, *source.companions], extra


def env_pins(plan: Plan, env_name: str, facts: HostFacts) -> tuple[list[str], list[str]]:
    """(pins for the environment, sdist-only names to build) for the target."""
    from provision.install.executor import Installer
    from provision.install.pipconfig import read_index_config
    from provision.planner.recipes import load_recipes
    from provision.planner.resolve import env_inputs

    recipes = load_recipes()
    env = plan.environment(env_name)
    assert env is not None
    reqs, excluded, _ = env_inputs(plan, env, recipes)
    torch_reqs, extra_index = torch_pin(plan, env_name, facts)
    # The planned torch build replaces the plan's bare torch spec.
    reqs = [
        r
        for r in reqs
        if canonicalize_name(r.split("=")[0].split(">")[0].split("<")[0].strip()) not in ("torch",)
    ] + torch_reqs
    extra_index += tuple(u for b in plan.installs if b.environment == env_name for u in b.extra_index_urls)
    flags = Installer("uv", read_index_config()).build_flags()
    for url in extra_index:
        flags[:0] = ["--index", url]
    if extra_index and "--index-strategy" not in flags:
        flags += ["--index-strategy", "unsafe-best-match"]
    python = env.python or f"{facts.python_minor[0]}.{facts.python_minor[1]}"
    with tempfile.TemporaryDirectory(prefix="xinfer-fleet-") as tmp:
        req, ex = Path(tmp) / "requirements.in", Path(tmp) / "excludes.txt"
        req.write_text("\n".join(reqs) + "\n")
        ex.write_text("\n".join(excluded) + "\n")
        argv = [
            _uv(),
            "pip",
            "compile",
            *flags,
            "--no-header",
            "--no-annotate",
            "--color",
            "never",
            "--python-platform",
            uv_platform(facts),
            "--python-version",
            python,
            "--excludes",
            str(ex),
            str(req),
        ]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip() and not ln.startswith("hint")]
        raise OperationFailed(
            f"[{env_name}] does not resolve for {facts.target}: {' '.join(lines[-3:])[:700]}"
        )
    pins = [ln.strip() for ln in out.stdout.splitlines() if "==" in ln and not ln.lstrip().startswith("#")]
    built = {b.name for b in plan.installs if b.build is not None}
    sdist_only = [n for n in excluded if n not in built]
    return pins, sdist_only


def make_group_bundle(plan: Plan, plan_id: str, facts: HostFacts, base: Path) -> GroupBundle:
    d = base / plan_id
    wheels = d / "wheels"
    stamp = d / "pins.txt"
    all_pins: list[str] = []
    sdist: list[str] = []
    for env in plan.environments:
        if not env.backends:
            continue
        pins, extra = env_pins(plan, env.name, facts)
        all_pins += [p for p in pins if p not in all_pins]
        sdist += [s for s in extra if s not in sdist]
    listing = "\n".join(sorted(all_pins) + [f"sdist:{s}" for s in sorted(sdist)]) + "\n"
    if not (stamp.exists() and stamp.read_text() == listing and wheels.is_dir()):
        download(
            all_pins + [s for s in sdist if not any(p.startswith(s + "==") for p in all_pins)], facts, wheels
        )
        stamp.write_text(listing)
    content_id = hashlib.sha256(listing.encode()).hexdigest()[:12]
    return GroupBundle(plan_id, wheels, pack(wheels, d / "wheels.tar"), tuple(all_pins), content_id)
