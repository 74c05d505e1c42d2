"""make_bundle(plan, out_dir): everything the plan installs, for its target, in one directory.

Per environment of the plan: a PEP 751 lock for the target (provision.bundle.lock), then every
locked file fetched and hash-checked (provision.bundle.fetch). Then what an offline target
needs besides: the sdists of source builds and their build backends' wheels, xinfer-setup's
own wheel and its dependencies, and, where the target can run it, the llama-cpp-python wheel
built here. MANIFEST.json is written last.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from provision import __version__
from provision.bundle.fetch import fetch_all, place
from provision.bundle.lock import EnvLock, run_compile, sdist_build_requires, sdist_requires
from provision.bundle.manifest import (
    MANIFEST,
    FileEntry,
    Manifest,
    Target,
    entry_for,
    read_manifest,
    write_manifest,
)
from provision.errors import OperationFailed, UserError
from provision.install import wheelhouse
from provision.install.executor import Installer
from provision.install.pipconfig import IndexConfig, read_index_config
from provision.install.progress import Reporter
from provision.install.torch_source import resolve_torch_source
from provision.plan import Environment, Plan
from provision.planner.recipes import _read
from provision.planner.resolve import target_platform, uv_binary

PARTIAL = ".xinfer-bundle-partial"
TOOL_ENV = "xinfer-setup"
BUILD_ENV = "build"


@dataclass
class EnvSummary:
    name: str
    python: str
    packages: int
    files: int
    bytes: int
    unknown_sizes: int
    resolve_s: float
    fetch_s: float = 0.0
    reused: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class BundleReport:
    out_dir: Path
    target: Target
    dry_run: bool
    environments: list[EnvSummary]
    notes: list[str]
    manifest: Manifest | None = None
    seconds: float = 0.0
    built: dict[str, str] = field(default_factory=dict)  # backend -> wheelhouse key of a wheel built here
    built_on: dict[str, Any] | None = None  # this host's profile, when it built for another machine

    @property
    def total_bytes(self) -> int:
        # With a manifest: every file, the sdists and wheels built here included.
        if self.manifest is not None:
            return self.manifest.total_bytes()
        return sum(e.bytes for e in self.environments)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "bundle": str(self.out_dir),
            "dry_run": self.dry_run,
            "target": asdict(self.target),
            "environments": [asdict(e) for e in self.environments],
            "total_bytes": self.total_bytes,
            "notes": self.notes,
            "seconds": self.seconds,
            "manifest": None if self.dry_run else str(self.out_dir / MANIFEST),
            "built": dict(self.built),
            "built_on": self.built_on,
        }

    def render(self) -> str:
        head = "would fetch" if self.dry_run else "bundled"
        lines = [f"bundle for {self.target.platform}, Python {self.target.python} ({head}):"]
        for e in self.environments:
            unknown = f", {e.unknown_sizes} of unknown size" if e.unknown_sizes else ""
            lines.append(
                f"  {e.name}: {e.packages} packages, {e.files} files, {e.bytes / 1e6:.1f} MB{unknown}; "
                f"resolve {e.resolve_s:.1f} s, fetch {e.fetch_s:.1f} s"
                + (f" ({e.reused} already there)" if e.reused else "")
            )
            lines += [f"     note: {n}" for n in e.notes]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  total {self.total_bytes / 1e6:.1f} MB in {self.seconds:.0f} s")
        return "\n".join(lines)


# ------------------------------------------------------------------ small pure pieces


def plan_target(plan: Plan, recipes) -> Target:
    os_ = plan.profile.os
    py = plan.profile.python.minor
    return Target(
        platform=target_platform(plan, recipes.resolve),
        python=f"{py[0]}.{py[1]}",
        system=os_.system,
        arch="aarch64" if os_.arch in ("aarch64", "arm64") else os_.arch,
    )


def _name(req: str) -> str | None:
    try:
        return canonicalize_name(Requirement(req).name)
    except InvalidRequirement:
        return None


def _extras(req: str) -> tuple[str, ...]:
    try:
        return tuple(sorted(Requirement(req).extras))
    except InvalidRequirement:
        return ()


def installed_envs(plan: Plan) -> list[Environment]:
    return [e for e in plan.environments if any(b.environment == e.name for b in plan.installs)]


def tool_requirements() -> list[str]:
    """xinfer-setup's own run-time requirements (no extras), from its installed metadata."""
    out = []
    for r in metadata.requires("xinfer-setup") or []:
        req = Requirement(r)
        if req.marker is not None and "extra" in str(req.marker):
            continue
        out.append(r)
    return out


def reachable(url: str, timeout: float = 4.0) -> bool:
    if url.startswith("file:"):
        return True
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):  # noqa: S310
            return True
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (urllib.error.URLError, OSError, ValueError):
        return False


def check_out_dir(out_dir: Path, target: Target) -> None:
    """-o must be new, empty, or a bundle (even a half-made one) for the same target."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"-o {out_dir} is a file, not a directory")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if (out_dir / MANIFEST).is_file():
        old = read_manifest(out_dir).target
        if (old.platform, old.python) != (target.platform, target.python):
            raise UserError(
                f"-o {out_dir} holds a bundle for {old.platform}, Python {old.python}; this one is for "
                f"{target.platform}, Python {target.python}: use another directory"
            )
        return
    if (out_dir / PARTIAL).is_file():
        return
    raise UserError(f"-o {out_dir} is not empty and is not a bundle: give a new or empty directory")


def project_root() -> Path | None:
    """This checkout's source tree, when xinfer-setup runs from one (editable or in place)."""
    root = Path(__file__).resolve().parent.parent.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "xinfer-setup"' in pyproject.read_text():
        return root
    return None


# ------------------------------------------------------------------ the run


class _Bundler:
    def __init__(
        self,
        plan: Plan,
        out_dir: Path,
        this_machine: bool,
        dry_run: bool,
        index: IndexConfig,
        reporter: Reporter,
        build_missing: bool,
        include_tool: bool,
    ) -> None:
        from provision.planner import load_recipes

        self.plan = plan
        self.out = out_dir
        self.this_machine = this_machine
        self.built_on: dict | None = None
        self._builder: tuple | None = None  # (this host's profile,) or () once asked
        self.dry_run = dry_run
        self.index = index
        self.reporter = reporter
        self.build_missing = build_missing
        self.include_tool = include_tool
        self.recipes = load_recipes()
        self.bundle_recipes = _read("bundle.toml")
        self.target = plan_target(plan, self.recipes)
        self.uv = uv_binary()
        self.wheels = out_dir / "wheels"
        self.locks = out_dir / "locks"
        self.summaries: list[EnvSummary] = []
        self.env_locks: dict[str, EnvLock] = {}
        self.notes: list[str] = []
        self.kept: dict[str, str] = {}  # bundle-relative path -> role
        self.sdists: dict[str, Path] = {}  # built backend -> its sdist (in the cache)
        self.built: dict[str, str] = {}
        self.hashes: dict[str, str] = {}  # bundle-relative path -> sha256 verified this run

    # -- pieces

    def built_sdists(self) -> None:
        for b in self.plan.installs:
            if b.build is None:
                continue
            version = b.version or ""
            sdist = wheelhouse.ensure_sdist(
                version, self.index.pip_flags(), self.reporter, wheelhouse.cache_root(), self.index.sources
            )
            self.sdists[b.name] = sdist
            if not self.dry_run:
                place(sdist, self.wheels / sdist.name)
                self.kept[f"wheels/{sdist.name}"] = "sdist"

    def env_requirements(self, env: Environment) -> tuple[list[str], list[str], tuple[str, ...], list[str]]:
        """(requirements, excluded names, extra indexes, notes) for one environment's lock."""
        built = {b.name for b in self.plan.installs if b.environment == env.name and b.build is not None}
        reqs: list[str] = []
        notes: list[str] = []
        excluded = sorted(built)
        for r in env.requirements:
            name = _name(r)
            if name in built:
                reqs += sdist_requires(self.sdists[name], _extras(r))
                notes.append(
                    f"{name} is built from its sdist: the sdist's own requirements are locked instead"
                )
            else:
                reqs.append(r)
        extra: list[str] = []
        for b in self.plan.installs:
            if b.environment != env.name:
                continue
            for url in b.extra_index_urls:
                if self.dry_run and not reachable(url):
                    excluded.append(canonicalize_name(b.name))
                    reqs = [r for r in reqs if _name(r) != canonicalize_name(b.name)]
                    notes.append(
                        f"{b.name}'s index {url} is unreachable from here: its files are not counted"
                    )
                else:
                    extra.append(url)
        if env.torch is not None:
            py = env.python or self.target.python
            try:
                source = resolve_torch_source(
                    env.torch.variant,
                    env.torch.index_url,
                    env.torch.version_spec,
                    self.index.sources,
                    "cp" + py.replace(".", ""),
                    self.target.arch,
                )
            except OperationFailed as e:
                if not self.dry_run:
                    raise
                excluded += ["torch", "torchvision", "torchaudio"]
                notes.append(f"torch is left out of this dry run: {e}")
            else:
                reqs.append(source.torch_requirement)
                if source.index_url:
                    extra.insert(0, source.index_url)
                notes.append(f"torch {source.torch_requirement}: {source.reason}")
        return reqs, excluded, tuple(dict.fromkeys(extra)), notes

    def lock_and_fetch(
        self,
        name: str,
        python: str,
        reqs: list[str],
        excluded: list[str],
        extra: tuple[str, ...],
        notes: list[str],
    ) -> EnvLock:
        self.reporter.say(
            f"[{name}] resolving {len(reqs)} requirements for {self.target.platform}, Python {python}"
        )
        with tempfile.TemporaryDirectory(prefix="xinfer-bundle-") as tmp:
            lock = run_compile(
                self.uv,
                EnvLock(name, self.target.platform, python, reqs, notes=notes),
                self.index,
                extra,
                Path(tmp),
                excluded,
            )
        summary = EnvSummary(
            name=name,
            python=python,
            packages=len(lock.pins),
            files=len(lock.files),
            bytes=sum(f.size or 0 for f in lock.files),
            unknown_sizes=sum(1 for f in lock.files if f.size is None),
            resolve_s=lock.seconds,
            notes=notes,
        )
        if not self.dry_run:
            self.locks.mkdir(parents=True, exist_ok=True)
            lock_path = self.locks / f"pylock.{name}.toml"
            lock_path.write_text(lock.lock_text)
            self.kept[f"locks/{lock_path.name}"] = "lock"
            self.reporter.say(f"[{name}] fetching {len(lock.files)} files")
            started = time.monotonic()
            got = fetch_all(lock.files, self.wheels)
            summary.fetch_s = round(time.monotonic() - started, 1)
            summary.bytes = sum(g.size for g in got)
            summary.unknown_sizes = 0
            summary.reused = sum(1 for g in got if g.reused)
            for g in got:
                self.kept[f"wheels/{g.path.name}"] = g.file.kind
                self.hashes[f"wheels/{g.path.name}"] = g.file.sha256  # checked by the fetch just now
        self.summaries.append(summary)
        self.env_locks[name] = lock
        return lock

    def build_backends(self) -> None:
        """Wheels of the build backends every sdist in the bundle asks for."""
        default = list(self.bundle_recipes["default_build_requires"])
        dynamic: dict[str, list[str]] = {
            canonicalize_name(k): list(v) for k, v in self.bundle_recipes["dynamic_build_requires"].items()
        }
        sdists: list[Path] = list(self.sdists.values())
        unread: list[str] = []
        for lock in self.env_locks.values():
            for f in lock.files:
                if f.kind != "sdist":
                    continue
                if (self.wheels / f.filename).is_file():
                    sdists.append(self.wheels / f.filename)
                else:
                    unread.append(f.filename)
        reqs: list[str] = []
        for s in sdists:
            reqs += sdist_build_requires(s, default)
        if unread:
            reqs += default
            self.notes.append(
                f"not fetched in a dry run, assumed to build with {', '.join(default)}: {', '.join(unread)}"
            )
        for r in list(reqs):
            reqs += dynamic.get(_name(r) or "", [])
        if not reqs:
            return
        reqs = list(dict.fromkeys(reqs))
        self.lock_and_fetch(
            BUILD_ENV,
            self.target.python,
            reqs,
            [],
            (),
            [f"build backends of {len(sdists) + len(unread)} sdists"],
        )

    def tool(self) -> None:
        reqs = tool_requirements()
        self.lock_and_fetch(TOOL_ENV, self.target.python, reqs, [], (), ["xinfer-setup's own dependencies"])
        if self.dry_run:
            return
        root = project_root()
        if root is None:
            self.notes.append(
                "xinfer-setup runs from an installed wheel, not a source tree: its own wheel is not bundled"
            )
            return
        with tempfile.TemporaryDirectory(prefix="xinfer-bundle-tool-") as tmp:
            argv = [
                self.uv,
                # sdist first, then the wheel from it: a stale build/ in the checkout (setuptools
                # keeps files there that the source no longer has) cannot leak into the wheel.
                "build",
                "--out-dir",
                tmp,
                *Installer("uv", self.index).build_flags(),
                str(root),
            ]
            # A fixed zip timestamp: the same source makes the same bytes, so a re-run keeps the file.
            env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
            out = subprocess.run(argv, capture_output=True, text=True, env=env)
            wheels = sorted(Path(tmp).glob("xinfer_setup-*.whl"))
            if out.returncode != 0 or not wheels:
                last = (out.stderr.strip().splitlines() or ["no output"])[-1]
                raise OperationFailed(f"cannot build xinfer-setup's own wheel from {root}: {last}")
            dest = place(wheels[0], self.wheels / wheels[0].name)
            self.kept[f"wheels/{dest.name}"] = "tool"

    def target_builder(self):
        """This host's profile when the bundle is for another machine whose wheels it can build
        (the same OS, arch and Python minor, a glibc at least the target's: install/target.py)."""
        if self.this_machine:
            return None
        from provision.install.target import target_mismatches
        from provision.probe.host import probe_host

        if self._builder is None:
            host = probe_host()
            self._builder = (host,) if not target_mismatches(self.plan.profile, host) else ()
        return self._builder[0] if self._builder else None

    def built_wheels(self) -> None:
        """The llama-cpp-python wheel built here, when the target can run it."""
        from provision.install.run import wheel_build_request

        host_arch = (
            "aarch64" if sys.platform == "linux" and _machine() in ("aarch64", "arm64") else _machine()
        )
        for b in self.plan.installs:
            if b.build is None:
                continue
            portable_cpu = b.build.portable and set(b.build.expected_backends) <= {"cpu"}
            same_python = self.target.python == f"{sys.version_info[0]}.{sys.version_info[1]}"
            builder = self.target_builder()
            fits = (
                self.this_machine or builder is not None or (portable_cpu and self.target.arch == host_arch)
            )
            if not fits or not same_python:
                self.notes.append(
                    f"{b.name}: no wheel built here fits the target ({self.target.platform}, Python "
                    f"{self.target.python}); the target builds it from the bundled sdist"
                )
                continue
            req = wheel_build_request(self.plan, b, builder)
            wheel = wheelhouse.built_wheel(req.key)
            if wheel is None and self.build_missing and not self.dry_run:
                wheel = wheelhouse.build(
                    req,
                    "uv",
                    Path(sys.executable),
                    Installer("uv", self.index).build_flags(),
                    self.index.pip_flags(),
                    self.reporter,
                    sources=self.index.sources,
                )
            if wheel is None:
                self.notes.append(
                    f"{b.name}: not built here yet (key {req.key}); the target builds it from the sdist"
                )
                continue
            if not _runs_here(wheel.name):
                self.notes.append(f"{b.name}: the wheel built here ({wheel.name}) does not fit this Python")
                continue
            self.built[b.name] = req.key
            if builder is not None:
                self.built_on = builder.to_dict()
            if not self.dry_run:
                for f in (wheel, wheel.parent / "build.json"):
                    if f.is_file():
                        place(f, self.out / "wheelhouse" / req.key / f.name)
                        self.kept[f"wheelhouse/{req.key}/{f.name}"] = "built"

    def prune(self) -> None:
        """Files a previous run of this bundle left that this plan no longer needs."""
        for sub in ("wheels", "wheelhouse", "locks", "simple"):
            d = self.out / sub
            if not d.is_dir():
                continue
            for p in sorted(d.rglob("*"), reverse=True):
                rel = p.relative_to(self.out).as_posix()
                if p.is_file() and rel not in self.kept:
                    p.unlink()
                elif p.is_dir() and not any(p.iterdir()):
                    p.rmdir()

    def simple_index(self) -> None:
        """DIR/simple: the wheels as a PEP 503 index, for tools that want an index URL (Xinference)."""
        from provision.bundle.xinference_env import write_simple_index

        known = {Path(rel).name: h for rel, h in self.hashes.items() if rel.startswith("wheels/")}
        for page in write_simple_index(self.out, known):
            self.kept[page.relative_to(self.out).as_posix()] = "index"

    def manifest(self, seconds: float) -> Manifest:
        files: list[FileEntry] = [
            entry_for(self.out, self.out / rel, role, self.hashes.get(rel))
            for rel, role in sorted(self.kept.items())
        ]
        envs = {
            name: {
                "python": lock.python,
                "platform": lock.platform,
                "lock": f"locks/pylock.{name}.toml",
                "pins": sorted(f"{k}=={v}" for k, v in lock.pins.items()),
            }
            for name, lock in self.env_locks.items()
        }
        timings = {f"{s.name}.resolve_s": s.resolve_s for s in self.summaries}
        timings |= {f"{s.name}.fetch_s": s.fetch_s for s in self.summaries}
        timings["total_s"] = round(seconds, 1)
        return Manifest(
            tool_version=__version__,
            target=self.target,
            plan=self.plan.to_dict(),
            files=files,
            environments=envs,
            built=dict(self.built),
            built_on=self.built_on,
            notes=list(self.notes),
            timings=timings,
        )


def _runs_here(wheel_name: str) -> bool:
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    here = set(sys_tags())
    return any(t in here for t in parse_wheel_filename(wheel_name)[3])


def _machine() -> str:
    import platform

    return platform.machine().lower()


def make_bundle(
    plan: Plan,
    out_dir: str | Path,
    *,
    this_machine: bool,
    dry_run: bool = False,
    index: IndexConfig | None = None,
    reporter: Reporter | None = None,
    build_missing: bool = True,
    include_tool: bool = True,
) -> BundleReport:
    """Resolve, fetch and record everything `plan` installs, for its target, under out_dir.

    this_machine: the plan was made for the host running this (not from --profile), so the
    llama-cpp-python wheel built here may go in. dry_run: resolve and add up sizes, write nothing.
    Raises UserError for a bad out_dir, OperationFailed when a resolution or a download fails.
    """
    started = time.monotonic()
    out = Path(out_dir).expanduser().absolute()
    b = _Bundler(
        plan,
        out,
        this_machine,
        dry_run,
        index or read_index_config(),
        reporter or Reporter(),
        build_missing,
        include_tool,
    )
    if dry_run:
        return _make(b, started)
    check_out_dir(out, b.target)
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTIAL).write_text("an xinfer-setup bundle being made; MANIFEST.json comes last\n")
    from provision.lock import root_lock

    # One writer per bundle directory, as for an environment root (install and fleet take it too).
    with root_lock(out, wait=True, say=b.reporter.say):
        return _make(b, started)


def _make(b: _Bundler, started: float) -> BundleReport:
    plan, out, dry_run = b.plan, b.out, b.dry_run
    b.built_sdists()
    for env in installed_envs(plan):
        reqs, excluded, extra, notes = b.env_requirements(env)
        b.lock_and_fetch(env.name, env.python or b.target.python, reqs, excluded, extra, notes)
    b.build_backends()
    if b.include_tool:
        b.tool()
    b.built_wheels()
    report = BundleReport(
        out, b.target, dry_run, b.summaries, b.notes, built=dict(b.built), built_on=b.built_on
    )
    report.seconds = round(time.monotonic() - started, 1)
    if not dry_run:
        b.prune()
        b.simple_index()
        report.manifest = b.manifest(report.seconds)
        write_manifest(out, report.manifest)
        (out / PARTIAL).unlink(missing_ok=True)
    return report
