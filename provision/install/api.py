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

import datetime
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from provision import __version__
from provision.errors import OperationFailed
from provision.install import state as state_mod
from provision.install import wheelhouse
from provision.install.envs import EnvLocation, ensure_env, locate
from provision.install.executor import Installer
from provision.install.pipconfig import IndexConfig, read_index_config
from provision.install.progress import Reporter
from provision.install.receipt import BackendRecord, EnvRecord, Receipt, write_receipt
from provision.install.torch_source import TORCH_FAMILY, TorchSource, resolve_torch_source
from provision.install.verify import EnvExpectation, checks_fingerprint, collect_facts, evaluate
from provision.plan import BackendDecision, Environment, Plan

# Rough disk use per backend once installed (MB), with downloads and build trees; checked
# before starting so a full disk is refused up front. Measured here for the CPU stack.
DISK_MB = {
    "xinference": 1500,
    "transformers": 300,
    "llama-cpp-python": 700,
    "xllamacpp": 300,
    "vllm": 6000,
    "sglang": 6000,
}
TORCH_DISK_MB = {"cpu": 1200, "mps": 1000}
TORCH_GPU_DISK_MB = 7000


@dataclass
class InstallOptions:
    venv_root: Path | None = None
    installer: str = "uv"
    index: IndexConfig | None = None
    # env name -> exact pins (name==version) from a receipt being replayed.
    replay_pins: dict[str, list[str]] = field(default_factory=dict)
    cache_dir: Path | None = None
    check_disk: bool = True
    # Installing from a bundle: no index is asked, not even whether the torch index answers.
    offline: bool = False


def _name(req: str) -> str | None:
    try:
        return canonicalize_name(Requirement(req).name)
    except InvalidRequirement:
        return None


def env_extras(env: Environment, plan: Plan) -> list[str]:
    """Requirements of the environment that no backend's package list covers (and not torch)."""
    covered = {_name(p) for b in plan.installs if b.environment == env.name for p in b.packages}
    return [r for r in env.requirements if _name(r) not in covered and _name(r) not in TORCH_FAMILY]


def build_request(plan: Plan, backend: BackendDecision) -> wheelhouse.BuildRequest:
    assert backend.build is not None
    return wheelhouse.BuildRequest(
        version=backend.version or _pinned_version(backend.packages, backend.name),
        cmake_args=tuple(backend.build.cmake_args),
        expected_backends=tuple(backend.build.expected_backends),
        cpu_features=wheelhouse.isa_features(plan.profile.cpu.flags or _local_cpu_flags()),
        arch=plan.profile.os.arch,
    )


def _local_cpu_flags() -> tuple[str, ...]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return tuple(line.split(":", 1)[1].split())
    except OSError:
        pass
    return ()


def _requirement_for(packages: tuple[str, ...], name: str) -> Requirement | None:
    """The plan's requirement for distribution `name` among a backend's packages."""
    for p in packages:
        try:
            r = Requirement(p)
        except InvalidRequirement:
            continue
        if canonicalize_name(r.name) == canonicalize_name(name):
            return r
    return None


def _pinned_version(packages: tuple[str, ...], name: str) -> str:
    r = _requirement_for(packages, name)
    pins = [s.version for s in r.specifier if s.operator == "=="] if r else []
    if not pins:
        raise OperationFailed(f"{name}: the plan gives no exact version to build")
    return pins[0]


def _extras_of(packages: tuple[str, ...], name: str) -> str:
    r = _requirement_for(packages, name)
    return "[" + ",".join(sorted(r.extras)) + "]" if r and r.extras else ""


def estimate_disk_mb(plan: Plan, todo: list[str]) -> int:
    total = 0
    for name in todo:
        total += DISK_MB.get(name, 500)
    for env in plan.environments:
        if env.torch is not None and any(b in todo for b in env.backends):
            total += TORCH_DISK_MB.get(env.torch.variant, TORCH_GPU_DISK_MB)
    return total


def check_free_disk(need_mb: int, paths: list[Path]) -> None:
    """Refuse before downloading anything when a target filesystem is too small (numbers in the message)."""
    for p in paths:
        probe = p
        while not probe.exists():
            probe = probe.parent
        free_mb = shutil.disk_usage(probe).free // (1024 * 1024)
        if free_mb < need_mb:
            raise OperationFailed(
                f"not enough disk space: the planned installs need about {need_mb} MB, "
                f"{probe} has {free_mb} MB free"
            )


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
        self.previous = _previous_receipt(self.primary.prefix)
        # env name -> where its torch came from, for a matching torchvision later.
        self._companions: dict[str, TorchSource] = {}
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
            created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            tool_version=__version__,
        )

    def save(self) -> Path:
        return write_receipt(self.receipt(), self.primary.prefix)

    # ------------------------------------------------------------ steps

    def state(self, loc: EnvLocation) -> state_mod.EnvState:
        """The environment's packages, listed again only after a command that may have changed them."""
        if loc.name not in self._states:
            self._states[loc.name] = state_mod.read_state(loc.python)
        return self._states[loc.name]

    def _run(self, argv: list[str], what: str) -> subprocess.CompletedProcess:
        self.reporter.say(what)
        self._states.clear()
        return subprocess.run(argv, capture_output=True, text=True)

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
        if same_build and not state_mod.unmet([f"torch{spec}"], current):
            pins = [f"torch=={torch.version}"]
            tv = current.get("torchvision")
            if tv and tv.local_tag == torch.local_tag:
                pins.append(f"torchvision=={tv.version}")
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
        out = self._run(
            self.installer.install_argv(loc.python, [source.torch_requirement], extra_index_urls=extra),
            f"[{env.name}] installing {source.torch_requirement}",
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
        return [source.torch_requirement, *source.companions]

    def install_env(self, env: Environment) -> None:
        loc = self.locations[env.name]
        backends = [b for b in self.plan.installs if b.environment == env.name]
        if not backends:
            return
        if ensure_env(loc, self.installer, env.python):
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
            constraints.write_text("\n".join(_merge_pins(pins)) + "\n")
            extras = env_extras(env, self.plan)
            for i, backend in enumerate(backends):
                self.install_backend(env, loc, backend, constraints, extras if i == 0 else [])
        self.fix_torchvision(env, loc)
        self.verify_env(env, loc)

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
        try:
            if backend.build is not None:
                reqs = self._build_requirement(backend, loc, current)
            else:
                reqs = [p for p in backend.packages if _name(p) not in TORCH_FAMILY] + extras
                if not state_mod.unmet(reqs, current, state_mod.deliberately_absent(current)):
                    reqs = []
            if reqs:
                out = self._run(
                    self.installer.install_argv(loc.python, reqs, constraints, extra_index),
                    f"[{env.name}] installing {backend.name}: {' '.join(reqs)}",
                )
                if out.returncode != 0:
                    raise OperationFailed(self._fail_text(out))
                rec.source = rec.source or "package index"
            else:
                rec.source = rec.source or "already installed"
                self.reporter.say(f"[{env.name}] {backend.name}: already installed")
        except OperationFailed as e:
            rec.status, rec.reason = "failed", str(e)
            rec.log = getattr(e, "log_path", None) and str(e.log_path)
            self.reporter.say(f"[{env.name}] {backend.name} FAILED: {e}")
        except KeyboardInterrupt:
            rec.status, rec.reason = "failed", "interrupted"
            raise
        else:
            dist = self.state(loc).get(_dist_name(backend))
            rec.status = "installed" if dist else "failed"
            rec.version = dist.version if dist else rec.version
            rec.reason = None if dist else f"{_dist_name(backend)} is not installed after the step"
        finally:
            rec.duration_s = round(time.monotonic() - started, 1)

    def _build_requirement(
        self, backend: BackendDecision, loc: EnvLocation, current: state_mod.EnvState
    ) -> list[str]:
        req = build_request(self.plan, backend)
        dist = current.get(backend.name)
        rec = self.records[backend.name]
        rec.cmake_args = list(req.effective_args)
        marker = f"/wheelhouse/{req.key}/"
        if dist is not None and dist.version == req.version and dist.direct_url and marker in dist.direct_url:
            rec.source = dist.direct_url
            # The build is right; an extra asked for since ([server]) may still be missing.
            wanted = f"{backend.name}{_extras_of(backend.packages, backend.name)}=={req.version}"
            if state_mod.unmet([wanted], current):
                return [f"{wanted.split('==')[0]} @ {dist.direct_url}"]
            return []
        wheel = wheelhouse.build(
            req,
            self.installer.kind,
            loc.python,
            self.installer.build_flags(),
            self.index.pip_flags(),
            self.reporter,
            self.cache,
        )
        rec.source = wheel.as_uri()
        if dist is not None:
            # Same version, other build: the installer would call it satisfied.
            out = self._run(
                self.installer.uninstall_argv(loc.python, [backend.name]),
                f"removing the previous {backend.name} build",
            )
            if out.returncode != 0:
                raise OperationFailed(self._fail_text(out))
        return [f"{backend.name}{_extras_of(backend.packages, backend.name)} @ {wheel.as_uri()}"]

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
            )
            if out.returncode == 0:
                self.env_records[env.name].notes.append(f"torchvision {tv.version} replaced by {match}")
                return
        out = self._run(
            self.installer.uninstall_argv(loc.python, ["torchvision"]),
            f"[{env.name}] removing torchvision {tv.version}: not built for torch {torch.version}",
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
        if old_env is None or old_env.packages != self.env_records[env.name].packages:
            return False
        if old_env.verify_checks != checks_fingerprint():
            return False
        old = {b: prev.backend(b) for b in installed}
        if not all(
            r and r.status == "installed" and r.verify and all(c["ok"] for c in r.verify)
            for r in old.values()
        ):
            return False
        for b in installed:
            self.records[b].verify = [dict(c) for c in old[b].verify]
        self.env_records[env.name].notes = list(old_env.notes)
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


def _previous_receipt(prefix: Path) -> Receipt | None:
    from provision.install.receipt import RECEIPT_REL, read_receipt

    try:
        return read_receipt(prefix / RECEIPT_REL) if (prefix / RECEIPT_REL).exists() else None
    except Exception:  # an unreadable old receipt only means verifying again
        return None


def _merge_pins(pins: list[str]) -> list[str]:
    """One pin per project, the first given winning (torch pins come before replay pins)."""
    seen: dict[str, str] = {}
    for p in pins:
        n = _name(p)
        if n and n not in seen:
            seen[n] = p
    return list(seen.values())


def _dist_name(backend: BackendDecision) -> str:
    from provision.install.receipt import BACKEND_DISTS

    return BACKEND_DISTS.get(backend.name, backend.name)


def expectation(plan: Plan, env: Environment, backends: tuple[str, ...]) -> EnvExpectation:
    archs = []
    if env.torch is not None and env.torch.variant.startswith("cu"):
        archs = [f"sm_{g.sm}" for g in plan.profile.nvidia_gpus if g.sm]
    elif env.torch is not None and env.torch.variant.startswith("rocm"):
        archs = [g.gfx for g in plan.profile.amd_gpus if g.gfx]
    llama = plan.backend("llama-cpp-python")
    return EnvExpectation(
        backends=backends,
        torch_variant=env.torch.variant if env.torch else None,
        gpu_archs=tuple(dict.fromkeys(archs)),
        llama_backends=tuple(llama.build.expected_backends) if llama and llama.build else (),
    )


def verify_environment(plan: Plan, env: Environment, python: Path, backends: tuple[str, ...]):
    return evaluate(expectation(plan, env, backends), collect_facts(python, backends))


def install_plan(
    plan: Plan,
    venv_root: Path | None = None,
    installer: str = "uv",
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
    run = _Run(plan, opts, reporter)
    if opts.check_disk:
        todo = [
            b.name for b in plan.installs if not run.state(run.locations[b.environment]).get(_dist_name(b))
        ]
        if todo:
            check_free_disk(
                estimate_disk_mb(plan, todo),
                [run.locations[e.name].prefix for e in plan.environments] + [run.cache],
            )
    try:
        for env in plan.environments:
            run.install_env(env)
    finally:
        path = run.save()
        reporter.say(f"receipt: {path}")
    return run.receipt()
