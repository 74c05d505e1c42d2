"""`plan --resolve`: resolve every environment of a plan for its TARGET platform, before installing.

`uv pip compile --no-build --python-platform <arch>-manylinux_<glibc> --python-version <x.y>`
reads wheel metadata only, so a GPU box's plan resolves from a CPU machine in seconds.
Sdist-only packages cannot be read under --no-build: the plan's source builds
(llama-cpp-python) and the known sdist-only dependencies (recipes/resolve.toml) are left out
with --excludes and their own declared requirements resolved in their place.

A plan fails the check when an environment does not resolve, when an engine resolves to a
version other than the one planned (a silent fallback), or when two distributions that ship
the same files land in one environment.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from provision.errors import OperationFailed
from provision.plan import Environment, Plan
from provision.planner.recipes import Recipes, ResolveRecipes, load_recipes
from provision.planner.versions import vtuple
from provision.requirements import requirement_name

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")


@dataclass
class EnvResolution:
    name: str
    platform: str
    python: str
    requirements: list[str]
    ok: bool = False
    resolved: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class ResolveReport:
    environments: list[EnvResolution]

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.environments)

    def summary(self) -> str:
        bad = [f"[{e.name}] {p}" for e in self.environments for p in e.problems]
        return "; ".join(bad) if bad else "every environment resolves as planned"

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "environments": [asdict(e) for e in self.environments]}

    def render(self) -> str:
        lines = ["resolution (uv pip compile, for the target platform):"]
        for e in self.environments:
            state = "ok  " if e.ok else "FAIL"
            lines.append(
                f"  {state} {e.name}: {e.platform}, Python {e.python}, {len(e.resolved)} packages, "
                f"{e.seconds:.1f} s"
            )
            lines += [f"       {p}" for p in e.problems]
            lines += [f"       note: {n}" for n in e.notes]
        return "\n".join(lines)


def target_platform(plan: Plan, rec: ResolveRecipes) -> str:
    """uv's --python-platform for the plan's host: glibc rounded down to a tag uv knows.

    Sample: linux x86_64 'glibc 2.36' -> 'x86_64-manylinux_2_36'; 'glibc 2.30' -> '..._2_28'.
    """
    os_ = plan.profile.os
    arch = "aarch64" if os_.arch in ("aarch64", "arm64") else os_.arch
    if os_.system == "darwin":
        return f"{arch}-apple-darwin"
    if os_.system == "windows":
        return f"{arch}-pc-windows-msvc"
    glibc = os_.glibc_version
    tags = [t for t in rec.manylinux.get(arch, ()) if glibc and vtuple(t) <= glibc]
    if not tags:
        return f"{arch}-unknown-linux-gnu"
    return f"{arch}-manylinux_{tags[-1].replace('.', '_')}"


def env_inputs(plan: Plan, env: Environment, recipes: Recipes) -> tuple[list[str], list[str], list[str]]:
    """(requirements, excluded names, notes) for resolving one environment."""
    built = {b.name: b for b in plan.installs if b.environment == env.name and b.build is not None}
    reqs: list[str] = []
    notes: list[str] = []
    for r in env.requirements:
        name = requirement_name(r)
        if name in built:
            requires = list(recipes.engine(name).get("requires", []))
            reqs += requires
            notes.append(f"{name} is built from source: its declared requirements are resolved in its place")
            continue
        reqs.append(r)
    if env.torch is not None and env.torch.version_spec:
        reqs.append(f"torch{env.torch.version_spec}")
    excluded = list(built) + list(recipes.resolve.sdist_only)
    for deps in recipes.resolve.sdist_only.values():
        reqs += list(deps)
    indexes = [u for b in plan.installs if b.environment == env.name for u in b.extra_index_urls]
    if indexes:
        notes.append(f"resolved against PyPI; at install the same versions come from {', '.join(indexes)}")
    if env.torch is not None and env.torch.index_url:
        notes.append(
            f"torch's version resolved against PyPI; its {env.torch.variant} build comes from "
            f"{env.torch.index_url}"
        )
    return reqs, excluded, notes


def parse_pins(text: str) -> dict[str, str]:
    """`uv pip compile` output -> {canonical name: version}.

    Sample (--no-header --no-annotate):
        click==8.1.8
        xinference==4.1.0
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _PIN.match(line.strip())
        if m:
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def check_versions(plan: Plan, env: Environment, resolved: dict[str, str]) -> list[str]:
    problems = []
    for b in plan.installs:
        if b.environment != env.name or not b.version or b.build is not None:
            continue
        got = resolved.get(canonicalize_name(b.name))
        if got is None:
            problems.append(f"{b.name} is not in the resolution at all")
        elif got != b.version:
            problems.append(f"{b.name} resolves to {got}, not the planned {b.version} (a silent fallback)")
    return problems


def check_same_files(resolved: dict[str, str], rec: ResolveRecipes) -> list[str]:
    problems = []
    for group in rec.same_files:
        present = [d for d in group.dists if canonicalize_name(d) in resolved]
        if len(present) < 2:
            continue
        if group.allowed_when and _satisfied(group.allowed_when, resolved):
            continue
        pins = ", ".join(f"{d}=={resolved[canonicalize_name(d)]}" for d in present)
        problems.append(f"{pins} both install the '{group.module}' module ({group.note})")
    return problems


def _satisfied(req: str, resolved: dict[str, str]) -> bool:
    r = Requirement(req)
    version = resolved.get(canonicalize_name(r.name))
    try:
        return version is not None and Version(version) in r.specifier
    except InvalidVersion:
        return False


def _failure_text(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith("hint:")]
    text = " ".join(keep)
    return re.sub(r"\s+", " ", text)[:900] or "uv pip compile failed with no output"


def uv_binary() -> str:
    from uv import find_uv_bin  # uv is a dependency of xinfer-setup: it ships with it

    found: str = find_uv_bin()
    return found


def resolve_environment(
    plan: Plan, env: Environment, recipes: Recipes, uv: str, timeout: float = 300.0
) -> EnvResolution:
    profile = plan.profile
    python = env.python or f"{profile.python.minor[0]}.{profile.python.minor[1]}"
    platform = target_platform(plan, recipes.resolve)
    reqs, excluded, notes = env_inputs(plan, env, recipes)
    res = EnvResolution(env.name, platform, python, reqs, notes=notes)
    with tempfile.TemporaryDirectory(prefix="xinfer-resolve-") as tmp:
        req_file, ex_file = Path(tmp) / "requirements.in", Path(tmp) / "excludes.txt"
        req_file.write_text("\n".join(reqs) + "\n")
        ex_file.write_text("\n".join(excluded) + "\n")
        argv = [
            uv,
            "pip",
            "compile",
            "--no-config",
            "--no-build",
            "--python-platform",
            platform,
            "--python-version",
            python,
            "--excludes",
            str(ex_file),
            "--no-header",
            "--no-annotate",
            "--color",
            "never",
            str(req_file),
        ]
        started = time.monotonic()
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            res.problems.append(f"uv pip compile did not finish in {timeout:.0f} s")
            return res
        except OSError as e:
            raise OperationFailed(f"plan --resolve cannot run uv ({uv}): {e.strerror}") from None
        res.seconds = round(time.monotonic() - started, 2)
    if out.returncode != 0:
        res.problems.append(f"does not resolve: {_failure_text(out.stderr)}")
        return res
    res.resolved = parse_pins(out.stdout)
    res.problems += check_versions(plan, env, res.resolved)
    res.problems += check_same_files(res.resolved, recipes.resolve)
    res.ok = not res.problems
    return res


def resolve_plan(plan: Plan, recipes: Recipes | None = None, uv: str | None = None) -> ResolveReport:
    recipes = recipes or load_recipes()
    uv = uv or uv_binary()
    envs = [e for e in plan.environments if e.backends]
    return ResolveReport([resolve_environment(plan, e, recipes, uv) for e in envs])
