"""What must be prepared before a backend installs: a source build (llama-cpp-python) from our
wheelhouse, started in the background as soon as its environment exists so the compiler overlaps the
other installs (overlap.py), and the requirement that installs the built wheel (or none when that
very build is installed already).
"""

from __future__ import annotations

import functools
import urllib.parse
import urllib.request
from pathlib import Path

from provision.errors import OperationFailed
from provision.install import state as state_mod
from provision.install import wheelhouse
from provision.install.context import RunContext, fail_text
from provision.install.envs import EnvLocation, ensure_env
from provision.install.overlap import BackgroundBuilds
from provision.install.pipconfig import PYPI_SIMPLE
from provision.install.record import dist_name
from provision.install.wheel_guard import guarded_build
from provision.plan import BackendDecision, Plan
from provision.profile import HostProfile
from provision.requirements import extras_of, pinned_version


def wheel_build_request(
    plan: Plan, backend: BackendDecision, builder: HostProfile | None = None
) -> wheelhouse.BuildRequest:
    """The build the plan asks for; `builder` is the host that compiles it (the plan's own host
    unless installing for another machine's profile): its libc and compiler go into the key."""
    assert backend.build is not None
    host = builder or plan.profile
    return wheelhouse.BuildRequest(
        version=backend.version or pinned_version(backend.packages, backend.name),
        cmake_args=tuple(backend.build.cmake_args),
        expected_backends=tuple(backend.build.expected_backends),
        cpu_features=wheelhouse.isa_features(plan.profile.cpu.flags or _local_cpu_flags()),
        arch=plan.profile.os.arch,
        nvcc_version=host.toolchain.nvcc,
        cuda_toolkit=backend.build.cuda_toolkit,
        libc=host.os.libc,
        cc=host.toolchain.cc,
        hipcc_version=host.toolchain.hipcc,
    )


def _local_cpu_flags() -> tuple[str, ...]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return tuple(line.split(":", 1)[1].split())
    except OSError:
        pass
    return ()


def build_is_installed(
    backend: BackendDecision, req: wheelhouse.BuildRequest, current: state_mod.EnvState
) -> bool:
    """The environment already has this very build (same version, from our wheelhouse entry)."""
    dist = current.get(backend.name)
    marker = f"/wheelhouse/{req.key}/"
    return bool(dist and dist.version == req.version and dist.direct_url and marker in dist.direct_url)


class SourceBuilds:
    """The run's source builds: started early in the background, taken by the step that installs them."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.background = BackgroundBuilds()

    def start(self) -> None:
        """Start every source build that has no wheel yet, so it runs while the other steps install."""
        ctx = self.ctx
        for backend in ctx.plan.installs:
            if backend.build is None:
                continue
            req = wheel_build_request(ctx.plan, backend, ctx.opts.builder)
            if wheelhouse.built_wheel(req.key, ctx.cache) is not None:
                continue
            loc = ctx.locations[backend.environment or ""]
            env = ctx.plan.environment(loc.name)
            try:
                if ensure_env(loc, ctx.installer, env.python if env else None):
                    ctx.forget(loc.name)
            except OperationFailed:
                continue  # the environment's own step reports it, in its place
            if build_is_installed(backend, req, ctx.state(loc)):
                continue
            ctx.reporter.say(f"[{loc.name}] {backend.name}: building in the background meanwhile")
            self.background.start(backend.name, functools.partial(self._build_wheel, req, loc))

    def close(self) -> None:
        self.background.close()

    def _build_wheel(self, req: wheelhouse.BuildRequest, loc: EnvLocation) -> Path:
        ctx = self.ctx

        def build() -> Path:
            return wheelhouse.build(
                req,
                ctx.installer.kind,
                loc.python,
                ctx.installer.build_flags(),
                ctx.index.pip_flags(),
                ctx.reporter,
                ctx.cache,
                sources=self._hash_sources(),
                installer_env=ctx.installer.env(),
            )

        return guarded_build(req, build, ctx.reporter.say)  # class 3: no CPU wheel under a GPU key

    def requirement(
        self, backend: BackendDecision, loc: EnvLocation, current: state_mod.EnvState, force: bool = False
    ) -> list[str]:
        """What installs the backend's build: its wheelhouse wheel (built now or in the background),
        or nothing when that build is installed with every extra asked for."""
        ctx = self.ctx
        req = wheel_build_request(ctx.plan, backend, ctx.opts.builder)
        dist = current.get(backend.name)
        rec = ctx.record.backends[backend.name]
        rec.cmake_args = list(req.effective_args)
        if dist is not None and build_is_installed(backend, req, current):
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
        if self.background.started(backend.name):
            ctx.reporter.say(f"[{loc.name}] {backend.name}: waiting for its background build")
            wheel = self.background.result(backend.name)
        else:
            wheel = self._build_wheel(req, loc)
        rec.source = wheel.as_uri()
        self._record_wheel_hash(backend, wheel)
        if dist is not None:
            # Same version, other build: the installer would call it satisfied.
            out = ctx.run(
                ctx.installer.uninstall_argv(loc.python, [backend.name]),
                f"removing the previous {backend.name} build",
                loc.name,
            )
            if out.returncode != 0:
                raise OperationFailed(fail_text(out))
        return [f"{backend.name}{extras_of(backend.packages, backend.name)} @ {wheel.as_uri()}"]

    def _record_wheel_hash(self, backend: BackendDecision, wheel: Path) -> None:
        """The wheelhouse wheel's sha256 into the receipt; on a replay it must be the receipt's."""
        name = dist_name(backend)
        actual = f"sha256={wheelhouse.sha256_file(wheel)}"
        wanted = self.ctx.opts.replay_hashes.get(backend.name, {}).get(name)
        if wanted and wanted != actual:
            raise OperationFailed(
                f"--from-receipt: the {name} wheel at hand ({actual[:23]}…) is not the file the receipt "
                f"installed ({wanted[:23]}…); remove {wheel.parent} to build it again, then compare"
            )
        self.ctx.record.backends[backend.name].hashes[name] = actual

    def _hash_sources(self) -> tuple[str, ...]:
        """The indexes pip would ask, PyPI when none is configured: where the sdist's sha256 is read."""
        index = self.ctx.index
        if index.no_index:
            return ()
        return (index.index_url or PYPI_SIMPLE, *index.extra_index_urls)
