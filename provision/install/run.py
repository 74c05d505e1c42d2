"""Carry a plan out: environments, torch from the right place, each backend, verify, receipt.

Per environment, in this order:
  1. the torch family, from the planned variant's index or a matching local-tagged build;
  2. each backend in plan order, with torch (and a matching torchvision) held by constraints so
     no later step swaps the build; the llama-cpp-python source build comes from our wheelhouse;
  3. a torchvision that does not match torch is replaced by a matching build or removed;
  4. verify, then the receipt (written after every environment, so an interrupted run leaves
     an accurate one and a re-run resumes).
A step whose requirements are already met is skipped, so a second run costs one listing per
environment plus verify.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from provision import __version__
from provision.errors import OperationFailed
from provision.install import state as state_mod
from provision.install import wheelhouse
from provision.install.disk import check_free_disk, estimate_disk_mb
from provision.install.envs import EnvLocation, ensure_env, locate
from provision.install.executor import Installer, InstallerKind
from provision.install.fingerprint import installed_fingerprint
from provision.install.ledger import merge_receipts
from provision.install.noop import UNCHANGED_NOTE, unchanged_receipt
from provision.install.overlap import BackgroundBuilds
from provision.install.own_index import must_reinstall_from_own_index
from provision.install.pin_check import check_pins
from provision.install.pipconfig import PYPI_SIMPLE, IndexConfig, read_index_config
from provision.install.progress import Reporter
from provision.install.receipt import BackendRecord, EnvRecord, Receipt, backend_dist, write_receipt
from provision.install.requirements import extras_of, merge_pins, pinned_version, requirement_name
from provision.install.torch_source import TORCH_FAMILY, TorchSource, is_torch_family, resolve_torch_source
from provision.install.verify import (
    EnvExpectation,
    checks_fingerprint,
    collect_facts,
    evaluate,
    gpu_archs,
    xllamacpp_build_of,
)
from provision.install.wheel_guard import guarded_build
from provision.plan import BackendDecision, Environment, Plan


@dataclass
class InstallOptions:
    venv_root: Path | None = None
    installer: InstallerKind = "uv"
    index: IndexConfig | None = None
    # env name -> exact pins (name==version) from a receipt being replayed.
    replay_pins: dict[str, list[str]] = field(default_factory=dict)
    # backend -> {dist: "sha256=<hex>"} from a receipt being replayed: those files and no others.
    replay_hashes: dict[str, dict[str, str]] = field(default_factory=dict)
    cache_dir: Path | None = None
    check_disk: bool = True
    # Another run holding the root: wait for it (saying so), or fail at once naming its pid.
    wait: bool = True
    # Installing from a bundle: no index is asked, not even whether the torch index answers.
    offline: bool = False


def env_extras(env: Environment, plan: Plan) -> list[str]:
    """Requirements of the environment that no backend's package list covers (and not torch)."""
    covered = {requirement_name(p) for b in plan.installs if b.environment == env.name for p in b.packages}
    covered |= set(TORCH_FAMILY)
    return [r for r in env.requirements if requirement_name(r) not in covered]


def wheel_build_request(plan: Plan, backend: BackendDecision) -> wheelhouse.BuildRequest:
    assert backend.build is not None
    return wheelhouse.BuildRequest(
        version=backend.version or pinned_version(backend.packages, backend.name),
        cmake_args=tuple(backend.build.cmake_args),
        expected_backends=tuple(backend.build.expected_backends),
        cpu_features=wheelhouse.isa_features(plan.profile.cpu.flags or _local_cpu_flags()),
        arch=plan.profile.os.arch,
        nvcc_version=plan.profile.toolchain.nvcc,
    )


def _local_cpu_flags() -> tuple[str, ...]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return tuple(line.split(":", 1)[1].split())
    except OSError:
        pass
    return ()


class _Run:
    """One install run: the shared state the steps update, and the receipt it turns into."""

    def __init__(self, plan: Plan, opts: InstallOptions, reporter: Reporter) -> None:
        self.plan = plan
        self.opts = opts
        self.reporter = reporter
        self.index = opts.index or read_index_config()
        self.installer = Installer(opts.installer, self.index)
        self.locations = locate(plan, opts.venv_root)
        self.cache = opts.cache_dir or wheelhouse.cache_root()
        self.records: dict[str, BackendRecord] = {}
        self.env_records: dict[str, EnvRecord] = {}
        self.notes: list[str] = []
        self._states: dict[str, state_mod.EnvState] = {}
        self._finished: set[str] = set()  # environments this run is done with
        self.previous = _previous_receipt(self.primary.prefix, reporter)
        # env name -> where its torch came from, for a matching torchvision later.
        self._companions: dict[str, TorchSource] = {}
        self.builds = BackgroundBuilds()
        for b in plan.backends:
            self.records[b.name] = BackendRecord(
                name=b.name,
                status="skipped" if b.action != "install" else "failed",
                environment=b.environment,
                version=b.version,
                packages=list(b.packages),
                cmake_args=list(b.build.cmake_args) if b.build else None,
                reason=b.reason if b.action != "install" else "not attempted",
            )
        for env in plan.environments:
            loc = self.locations[env.name]
            self.env_records[env.name] = EnvRecord(env.name, str(loc.prefix), str(loc.python))

    @property
    def primary(self) -> EnvLocation:
        from provision.plan import PRIMARY_ENV

        return self.locations.get(PRIMARY_ENV) or next(iter(self.locations.values()))

    def receipt(self) -> Receipt:
        return Receipt(
            profile=self.plan.profile.to_dict(),
            plan=self.plan.to_dict(),
            installer=self.opts.installer,
            environments=list(self.env_records.values()),
            backends=list(self.records.values()),
            notes=self.notes,
            created_at=_now(),
            tool_version=__version__,
        )

    def checkpoint(self, env_name: str) -> None:
        """Before a command changes an environment, a receipt that claims none of its planned backends:
        a run killed outright (SIGKILL, power) writes nothing more, and the receipt must not say
        installed about what the killed step may have half-removed. The final save restores the truth."""
        interim = []
        for rec in self.records.values():
            if rec.environment == env_name and rec.status != "skipped":
                rec = dataclasses.replace(
                    rec,
                    status="failed",
                    reason="interrupted: a step on its environment had started",
                    verify=[],
                )
            elif rec.environment not in self._finished:
                rec = dataclasses.replace(rec, status="skipped")  # the ledger keeps its old record
            interim.append(rec)
        self.save(dataclasses.replace(self.receipt(), backends=interim))

    def save(self, receipt: Receipt | None = None) -> Path:
        """Write what this run did into the root's receipt, keeping every entry still on disk."""
        listings: dict[str, state_mod.EnvState | None] = {}

        def present(rec: BackendRecord, env: EnvRecord) -> bool:
            if env.python not in listings:
                python = Path(env.python)
                listings[env.python] = state_mod.read_state(python) if python.exists() else None
            listing = listings[env.python]
            return listing is not None and listing.get(backend_dist(rec.name, rec.packages)) is not None

        try:
            return write_receipt(
                merge_receipts(self.previous, receipt or self.receipt(), present), self.primary.prefix
            )
        except OSError as e:
            # Written by rename: the previous receipt, if any, is still whole.
            raise OperationFailed(
                f"cannot write the receipt under {self.primary.prefix}: {e.strerror or e}"
            ) from None

    # ------------------------------------------------------------ steps

    def state(self, loc: EnvLocation) -> state_mod.EnvState:
        """The environment's packages, listed again only after a command that may have changed them."""
        if loc.name not in self._states:
            self._states[loc.name] = state_mod.read_state(loc.python)
        return self._states[loc.name]

    def _run(self, argv: list[str], what: str, env: str | None = None) -> subprocess.CompletedProcess:
        # The checkpoint first: once the step is announced, the receipt claims nothing it may undo.
        if env is not None:
            self.checkpoint(env)
        self.reporter.say(what)
        self._states.clear()
        # pip's cert/proxy settings reach uv as variables (uv does not read pip.conf).
        return subprocess.run(
            argv, capture_output=True, text=True, env={**os.environ, **self.installer.env()}
        )

    def _fail_text(self, out: subprocess.CompletedProcess) -> str:
        lines = [ln for ln in (out.stderr or out.stdout or "").strip().splitlines() if ln.strip()]
        return " | ".join(lines[-4:])[-800:] or f"exit {out.returncode}"

    def torch_pins(self, env: Environment, loc: EnvLocation, current: state_mod.EnvState) -> list[str]:
        """Install the planned torch build if the installed one is not it; return the pins to hold."""
        choice = env.torch
        assert choice is not None
        torch = current.get("torch")
        spec = choice.version_spec or ""
        # A build from the default index (index_url None) carries no variant tag to compare.
        same_build = torch is not None and (choice.index_url is None or torch.local_tag == choice.variant)
        if torch is not None and same_build and not state_mod.unmet([f"torch{spec}"], current):
            pins = [f"torch=={torch.version}"]
            tv = current.get("torchvision")
            if tv and tv.local_tag == torch.local_tag:
                pins.append(f"torchvision=={tv.version}")
            pins += family_pins(current)
            self.env_records[env.name].torch = {
                "requirement": pins[0],
                "source": "already installed",
                "version": torch.version,
            }
            return pins
        py_version = current.markers.get("python_version") or f"{sys.version_info[0]}.{sys.version_info[1]}"
        py_tag = "cp" + py_version.replace(".", "")
        source: TorchSource = resolve_torch_source(
            choice.variant,
            choice.index_url,
            spec,
            self.index.sources,
            py_tag,
            self.plan.profile.os.arch,
            **({"reachable": lambda _url: False} if self.opts.offline else {}),
        )
        self.reporter.say(f"[{env.name}] torch: {source.torch_requirement} ({source.reason})")
        extra = (source.index_url,) if source.index_url else ()
        # The torch family comes from the planned index only: for uv it is asked first (first-index),
        # for pip it is the only index.
        out = self._run(
            self.installer.install_argv(
                loc.python, [source.torch_requirement], extra_index_urls=extra, exclusive=True
            ),
            f"[{env.name}] installing {source.torch_requirement}",
            env.name,
        )
        if out.returncode != 0:
            raise OperationFailed(
                f"torch ({source.torch_requirement}, variant {choice.variant}) "
                f"failed to install: {self._fail_text(out)}"
            )
        self.env_records[env.name].torch = {
            "requirement": source.torch_requirement,
            "source": source.index_url or "find-links/mirror",
            "reason": source.reason,
            "version": source.torch_requirement.split("==", 1)[-1],
        }
        self._companions[env.name] = source
        return [source.torch_requirement, *source.companions, *family_pins(self.state(loc))]

    def start_builds(self) -> None:
        """Start every source build that has no wheel yet, so it runs while the other steps install."""
        for backend in self.plan.installs:
            if backend.build is None:
                continue
            req = wheel_build_request(self.plan, backend)
            if wheelhouse.built_wheel(req.key, self.cache) is not None:
                continue
            loc = self.locations[backend.environment or ""]
            env = self.plan.environment(loc.name)
            try:
                if ensure_env(loc, self.installer, env.python if env else None):
                    self._states.pop(loc.name, None)
            except OperationFailed:
                continue  # install_env reports it, in its place
            if self._build_is_installed(backend, req, self.state(loc)):
                continue
            self.reporter.say(f"[{loc.name}] {backend.name}: building in the background meanwhile")
            self.builds.start(backend.name, functools.partial(self._build_wheel, req, loc))

    def _build_wheel(self, req: wheelhouse.BuildRequest, loc: EnvLocation) -> Path:
        def build() -> Path:
            return wheelhouse.build(
                req,
                self.installer.kind,
                loc.python,
                self.installer.build_flags(),
                self.index.pip_flags(),
                self.reporter,
                self.cache,
                sources=self._hash_sources(),
                installer_env=self.installer.env(),
            )

        return guarded_build(req, build, self.reporter.say)  # class 3: no CPU wheel under a GPU key

    def install_env(self, env: Environment) -> None:
        loc = self.locations[env.name]
        # Source builds last: their wheel may still be building in the background.
        backends = sorted(
            (b for b in self.plan.installs if b.environment == env.name), key=lambda b: b.build is not None
        )
        if not backends:
            return
        if ensure_env(loc, self.installer, env.python):
            self._states.pop(loc.name, None)
        current = self.state(loc)
        if current.broken:
            # Half-written package records stop uv from reading the environment at all: drop them, so
            # their packages count as missing and the steps below install them again.
            for path in current.broken:
                shutil.rmtree(path, ignore_errors=True)
            names = ", ".join(Path(p).name for p in current.broken)
            self.reporter.say(
                f"[{env.name}] removed half-written package records (an install cut short): {names}"
            )
            self._states.pop(loc.name, None)
            current = self.state(loc)
        try:
            pins = self.torch_pins(env, loc, current) if env.torch is not None else []
        except OperationFailed as e:
            for b in backends:
                self.records[b.name].status, self.records[b.name].reason = "failed", str(e)
            self.reporter.say(f"[{env.name}] {e}")
            return
        pins += self.opts.replay_pins.get(env.name, [])
        with tempfile.TemporaryDirectory(prefix="xinfer-setup-") as tmp:
            constraints = Path(tmp) / "constraints.txt"
            constraints.write_text("\n".join(merge_pins(pins)) + "\n")
            extras = env_extras(env, self.plan)
            for i, backend in enumerate(backends):
                self.install_backend(env, loc, backend, constraints, extras if i == 0 else [])
        self.fix_torchvision(env, loc)
        self.verify_env(env, loc)
        # After verify: nothing of ours touches the install markers past this point.
        self.env_records[env.name].installed_fingerprint = installed_fingerprint(loc.prefix)
        self._finished.add(env.name)

    def install_backend(
        self,
        env: Environment,
        loc: EnvLocation,
        backend: BackendDecision,
        constraints: Path,
        extras: list[str],
    ) -> None:
        rec = self.records[backend.name]
        started = time.monotonic()
        current = self.state(loc)
        extra_index = tuple(backend.extra_index_urls)
        # A backend whose last install failed or did not verify may have left half-written
        # dependencies (a full disk, a kill) that still look installed: reinstall them, not trust them.
        suspect = self._suspect(backend.name)
        # class 20: the same version from another index (PyPI's CPU xllamacpp) is not this backend
        switch = must_reinstall_from_own_index(
            backend,
            current.get(_dist_name(backend)) is not None,
            self.previous.plan if self.previous else None,
        )
        try:
            if backend.build is not None:
                reqs = self._build_requirement(backend, loc, current, force=suspect)
            else:
                reqs = [p for p in backend.packages if requirement_name(p) not in TORCH_FAMILY] + extras
                left_out = state_mod.deliberately_absent(current) | set(backend.excludes)
                if not suspect and not switch and not state_mod.unmet(reqs, current, frozenset(left_out)):
                    reqs = []
            if reqs:
                excludes = None
                if backend.excludes:  # beside the constraints, in the same temporary directory
                    excludes = constraints.parent / f"excludes-{backend.name}.txt"
                    excludes.write_text("\n".join(backend.excludes) + "\n")
                again: tuple[str, ...] = ()
                if switch and not suspect:
                    again = (_dist_name(backend),)
                    self.reporter.say(
                        f"[{env.name}] {backend.name}: the installed copy did not come from "
                        f"{', '.join(backend.extra_index_urls)}; replacing it with that index's wheel"
                    )
                if suspect:
                    again = tuple(n for n in state_mod.closure(reqs, current) if not is_torch_family(n))
                    self.reporter.say(f"[{env.name}] {backend.name}: its last install failed; reinstalling")
                out = self._run(
                    self.installer.install_argv(
                        loc.python, reqs, constraints, extra_index, reinstall=again, excludes=excludes
                    ),
                    f"[{env.name}] installing {backend.name}: {' '.join(reqs)}",
                    env.name,
                )
                if out.returncode != 0:
                    raise OperationFailed(self._fail_text(out))
                self._remove_excluded(env, loc, backend)
                rec.source = rec.source or "package index"
            else:
                rec.source = rec.source or "already installed"
                self.reporter.say(f"[{env.name}] {backend.name}: already installed")
        except OperationFailed as e:
            rec.status, rec.reason = "failed", str(e)
            log_path = getattr(e, "log_path", None)  # a failed source build names its log
            rec.log = str(log_path) if log_path else None
            self.reporter.say(f"[{env.name}] {backend.name} FAILED: {e}")
        except KeyboardInterrupt:
            rec.status, rec.reason = "failed", "interrupted"
            raise
        else:
            dist = self.state(loc).get(_dist_name(backend))
            rec.status = "installed" if dist else "failed"
            rec.version = dist.version if dist else rec.version
            # The installer's own record of the file it installed (direct_url.json's archive hash).
            if dist and dist.archive_hash:
                rec.hashes[dist.name] = dist.archive_hash
            rec.reason = None if dist else f"{_dist_name(backend)} is not installed after the step"
        finally:
            rec.duration_s = round(time.monotonic() - started, 1)

    def _suspect(self, name: str) -> bool:
        old = self.previous.backend(name) if self.previous else None
        if old is None:
            return False
        return (old.status == "failed" and old.reason not in (None, "not attempted")) or (
            old.status == "installed" and any(not c.get("ok") for c in old.verify)
        )

    def _remove_excluded(self, env: Environment, loc: EnvLocation, backend: BackendDecision) -> None:
        """pip cannot leave a dependency out of a resolution: remove what it pulled against the plan."""
        present = [n for n in backend.excludes if self.state(loc).get(n) is not None]
        if not present:
            return
        out = self._run(
            self.installer.uninstall_argv(loc.python, present),
            f"[{env.name}] removing {', '.join(present)}: the plan leaves them out of {backend.name}",
        )
        if out.returncode != 0:
            raise OperationFailed(self._fail_text(out))

    def _build_requirement(
        self, backend: BackendDecision, loc: EnvLocation, current: state_mod.EnvState, force: bool = False
    ) -> list[str]:
        req = wheel_build_request(self.plan, backend)
        dist = current.get(backend.name)
        rec = self.records[backend.name]
        rec.cmake_args = list(req.effective_args)
        if dist is not None and self._build_is_installed(backend, req, current):
            assert dist.direct_url is not None
            rec.source = dist.direct_url
            wheel_file = Path(urllib.request.url2pathname(urllib.parse.urlparse(dist.direct_url).path))
            if wheel_file.is_file():
                self._record_wheel_hash(backend, wheel_file)
            # The build is right; an extra asked for since ([server]) may still be missing.
            wanted = f"{backend.name}{extras_of(backend.packages, backend.name)}=={req.version}"
            if force or state_mod.unmet([wanted], current):
                return [f"{wanted.split('==')[0]} @ {dist.direct_url}"]
            return []
        if self.builds.started(backend.name):
            self.reporter.say(f"[{loc.name}] {backend.name}: waiting for its background build")
            wheel = self.builds.result(backend.name)
        else:
            wheel = self._build_wheel(req, loc)
        rec.source = wheel.as_uri()
        self._record_wheel_hash(backend, wheel)
        if dist is not None:
            # Same version, other build: the installer would call it satisfied.
            out = self._run(
                self.installer.uninstall_argv(loc.python, [backend.name]),
                f"removing the previous {backend.name} build",
                loc.name,
            )
            if out.returncode != 0:
                raise OperationFailed(self._fail_text(out))
        return [f"{backend.name}{extras_of(backend.packages, backend.name)} @ {wheel.as_uri()}"]

    @staticmethod
    def _build_is_installed(
        backend: BackendDecision, req: wheelhouse.BuildRequest, current: state_mod.EnvState
    ) -> bool:
        """The environment already has this very build (same version, from our wheelhouse entry)."""
        dist = current.get(backend.name)
        marker = f"/wheelhouse/{req.key}/"
        return bool(dist and dist.version == req.version and dist.direct_url and marker in dist.direct_url)

    def _record_wheel_hash(self, backend: BackendDecision, wheel: Path) -> None:
        """The wheelhouse wheel's sha256 into the receipt; on a replay it must be the receipt's."""
        name = _dist_name(backend)
        actual = f"sha256={wheelhouse.sha256_file(wheel)}"
        wanted = self.opts.replay_hashes.get(backend.name, {}).get(name)
        if wanted and wanted != actual:
            raise OperationFailed(
                f"--from-receipt: the {name} wheel at hand ({actual[:23]}…) is not the file the receipt "
                f"installed ({wanted[:23]}…); remove {wheel.parent} to build it again, then compare"
            )
        self.records[backend.name].hashes[name] = actual

    def _hash_sources(self) -> tuple[str, ...]:
        """The indexes pip would ask, PyPI when none is configured: where the sdist's sha256 is read."""
        if self.index.no_index:
            return ()
        return (self.index.index_url or PYPI_SIMPLE, *self.index.extra_index_urls)

    def fix_torchvision(self, env: Environment, loc: EnvLocation) -> None:
        """A torchvision not built for this torch breaks transformers' imports: replace or remove it."""
        current = self.state(loc)
        torch, tv = current.get("torch"), current.get("torchvision")
        if not torch or not tv or tv.local_tag == torch.local_tag:
            return
        source = self._companions.get(env.name)
        match = next(
            (c for c in (source.companions if source else ()) if c.startswith("torchvision==")), None
        )
        if match:
            out = self._run(
                self.installer.install_argv(loc.python, [match, f"torch=={torch.version}"]),
                f"[{env.name}] replacing torchvision {tv.version} with {match}",
                env.name,
            )
            if out.returncode == 0:
                self.env_records[env.name].notes.append(f"torchvision {tv.version} replaced by {match}")
                return
        out = self._run(
            self.installer.uninstall_argv(loc.python, ["torchvision"]),
            f"[{env.name}] removing torchvision {tv.version}: not built for torch {torch.version}",
            env.name,
        )
        note = (
            f"removed torchvision {tv.version}: it is not built for torch {torch.version} and no matching "
            f"build is reachable (it breaks transformers imports; only vision models need it)"
        )
        if out.returncode == 0:
            self.env_records[env.name].notes.append(note)
            self.notes.append(f"[{env.name}] {note}")
            self.reporter.say(f"[{env.name}] {note}")

    def _reuse_verify(self, env: Environment, installed: tuple[str, ...]) -> bool:
        """Verify's findings depend only on what is installed: same packages, same passing results."""
        prev = self.previous
        old_env = prev.environment(env.name) if prev else None
        if prev is None or old_env is None or old_env.packages != self.env_records[env.name].packages:
            return False
        if old_env.verify_checks != checks_fingerprint():
            return False
        old = {b: prev.backend(b) for b in installed}
        passed = {
            b: r
            for b, r in old.items()
            if r and r.status == "installed" and r.verify and all(c["ok"] for c in r.verify)
        }
        if len(passed) != len(old):
            return False
        for b, r in passed.items():
            self.records[b].verify = [dict(c) for c in r.verify]
        self.env_records[env.name].notes = list(old_env.notes)
        self.env_records[env.name].verified_at = old_env.verified_at
        return True

    def verify_env(self, env: Environment, loc: EnvLocation) -> None:
        installed = tuple(
            b for b in env.backends if self.records.get(b) and self.records[b].status == "installed"
        )
        final = self.state(loc)
        self.env_records[env.name].packages = final.frozen()
        if not installed:
            return
        self.env_records[env.name].verify_checks = checks_fingerprint()
        if self._reuse_verify(env, installed):
            self.reporter.say(f"[{env.name}] nothing changed since the last verified install")
            return
        self.env_records[env.name].verified_at = _now()
        for check in verify_environment(self.plan, env, loc.python, installed):
            target = [check.backend] if check.backend in installed else list(installed)
            for b in target:
                self.records[b].verify.append(check.as_dict())
        bad = [
            f"{b}: {c['name']}: {c['detail']}"
            for b in installed
            for c in self.records[b].verify
            if not c["ok"]
        ]
        for line in bad:
            self.reporter.say(f"[{env.name}] verify FAILED {line}")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def family_pins(state: state_mod.EnvState) -> list[str]:
    """Exact pins for the torch family the torch step installed (triton, nvidia-*, ...): later steps
    resolve against other indexes and must not swap any of them for another index's build."""
    return [
        f"{d.name}=={d.version}"
        for d in state.dists.values()
        if is_torch_family(d.name) and d.name not in TORCH_FAMILY  # those three: torch_pins decides
    ]


def _previous_receipt(prefix: Path, reporter: Reporter) -> Receipt | None:
    from provision.errors import UserError
    from provision.install.receipt import RECEIPT_REL, read_receipt

    path = prefix / RECEIPT_REL
    if not path.exists():
        return None
    try:
        return read_receipt(path)
    except UserError as e:
        # Truncated or not ours: nothing in it can be trusted; this run verifies afresh and rewrites it.
        reporter.say(f"ignoring the unreadable receipt ({e}); this run writes a new one")
        return None


def _dist_name(backend: BackendDecision) -> str:
    return backend_dist(backend.name, backend.packages)


def expectation(plan: Plan, env: Environment, backends: tuple[str, ...]) -> EnvExpectation:
    variant = env.torch.variant if env.torch else None
    llama = plan.backend("llama-cpp-python")
    return EnvExpectation(
        backends=backends,
        torch_variant=variant,
        gpu_archs=gpu_archs(plan.profile, variant),
        llama_backends=tuple(llama.build.expected_backends) if llama and llama.build else (),
        xllamacpp_build=_xllamacpp_build(plan),
    )


def _xllamacpp_build(plan: Plan) -> str | None:
    """The xllamacpp build planned, from the wheel index chosen: .../whl/cu128 -> cuda, .../rocm* -> hip."""
    xl = plan.backend("xllamacpp")
    if xl is None or xl.action != "install":
        return None
    return xllamacpp_build_of(tuple(xl.extra_index_urls))


def verify_environment(plan: Plan, env: Environment, python: Path, backends: tuple[str, ...]):
    return evaluate(expectation(plan, env, backends), collect_facts(python, backends))


def install_plan(
    plan: Plan,
    venv_root: Path | None = None,
    installer: InstallerKind = "uv",
    *,
    options: InstallOptions | None = None,
    reporter: Reporter | None = None,
) -> Receipt:
    """Install every backend the plan says to install; returns the receipt (also written to disk).

    Raises OperationFailed only for whole-run refusals (disk); a backend that fails is recorded
    in the receipt with status "failed" and the others carry on.
    """
    opts = options or InstallOptions()
    opts.venv_root = venv_root if venv_root is not None else opts.venv_root
    opts.installer = installer or opts.installer
    reporter = reporter or Reporter()
    from provision.lock import root_lock

    with root_lock(opts.venv_root, wait=opts.wait, say=reporter.say):
        kept = unchanged_receipt(plan, opts.venv_root, opts.installer, bool(opts.replay_pins))
        if kept is not None:
            reporter.say(UNCHANGED_NOTE)
            return kept
        return _install_locked(plan, opts, reporter)


def _install_locked(plan: Plan, opts: InstallOptions, reporter: Reporter) -> Receipt:
    run = _Run(plan, opts, reporter)
    if not opts.offline and not opts.replay_pins:  # class 18: a partial mirror, named before any change
        check_pins(plan, run.index, reporter.say)
    if opts.check_disk:
        todo = [
            b.name
            for b in plan.installs
            if b.environment is not None and not run.state(run.locations[b.environment]).get(_dist_name(b))
        ]
        if todo:
            check_free_disk(
                estimate_disk_mb(plan, todo),
                [run.locations[e.name].prefix for e in plan.environments] + [run.cache],
            )
    try:
        run.start_builds()
        for env in plan.environments:
            run.install_env(env)
    finally:
        run.builds.close()
        path = run.save()
        reporter.say(f"receipt: {path}")
    return run.receipt()
