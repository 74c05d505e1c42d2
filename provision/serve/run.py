"""`serve` end to end: resolve the model, decide the engine, then serve it in the foreground
(engine-native, or through Xinference) until Ctrl-C / SIGTERM, stopping all it started.

Decisions are made by the pure functions in choice.py; this module gathers their inputs
(the model on disk, the host, what is installed) and carries them out.
"""

from __future__ import annotations

import ipaddress
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from provision import paths
from provision.errors import NotInstalled, OperationFailed, UserError
from provision.install.receipt import InstalledBackend
from provision.profile import HostProfile
from provision.serve.choice import EngineChoice
from provision.serve.decide import Planned, ServeOptions, decide_serving
from provision.serve.fit import load_fit_facts
from provision.serve.keys import keyed_command
from provision.serve.registry import registry_dir
from provision.serve.rules import load_serve_rules
from provision.serve.sources import Candidate, SourceOptions, local_candidate, resolve_model

TINY = "tiny"
DEFAULT_PORTS = {"native": 8000, "xinference": 9997}
NATIVE_READY_TIMEOUT_S = 900.0  # a 70B model from a slow disk
XINFERENCE_READY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ServeRequest:
    model: str
    engine: str | None = None
    via: str | None = None  # None (engine-native) or "xinference"
    host: str = "127.0.0.1"
    port: int | None = None
    api_key: str | None = None
    venv_root: Path | None = None
    profile_path: str | None = None
    revision: str | None = None
    size: str | None = None
    model_format: str | None = None
    quantization: str | None = None
    max_model_len: int | None = None
    gpus: tuple[int, ...] | None = None
    dtype: str | None = None
    gpu_memory_fraction: float | None = None
    force: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class Decision:
    planned: Planned
    command: list[str]
    host: str
    port: int
    served_name: str
    # engine-native transformers: where the engine itself listens, behind the proxy
    upstream_port: int | None = None
    python: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    # the key reaches the engine through a 0600 file read by this launcher flag
    api_key_flag: str | None = None

    @property
    def choice(self) -> EngineChoice:
        return self.planned.choice

    def to_dict(self) -> dict:
        c, p = self.planned.candidate, self.planned
        dtype = "" if p.launch.dtype == "auto" else f"; dtype {p.dtype} ({p.dtype_reason})"
        return {
            "engine": p.choice.engine,
            "reason": f"{p.choice.reason}; {p.fit.reason}{dtype}",
            "command": self.command,
            "model": c.display,
            "format": c.facts.format,
            "quantization": c.facts.quantization,
            "family": p.choice.family,
            "host": self.host,
            "port": self.port,
            "source": c.source,
            "served_name": self.served_name,
            "memory": p.fit.to_dict(),
            # What the engine process gets beyond ours: CUDA_VISIBLE_DEVICES, HSA_OVERRIDE_GFX_VERSION...
            "env": dict(self.env),
        }


# ---------------------------------------------------------------- pure helpers


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def installed_for_via(installed: dict[str, InstalledBackend], hint_args: str) -> dict[str, InstalledBackend]:
    """Engines Xinference can drive: those in its own environment; its llama.cpp engine is
    xllamacpp, so llama-cpp-python does not count."""
    xinf = installed.get("xinference")
    if xinf is None:
        raise NotInstalled(
            f"xinference is not installed here: run `xinfer-setup install --backend xinference{hint_args}`"
        )
    return {
        name: b
        for name, b in installed.items()
        if b.environment == xinf.environment and name not in ("xinference", "llama-cpp-python")
    }


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # As servers bind: a port a stopped server left in TIME_WAIT is free, a listening one is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


# ---------------------------------------------------------------- gathering inputs


def candidates(req: ServeRequest, all_installed: dict[str, InstalledBackend]) -> list[Candidate]:
    """What MODEL names, best first (the tiny model: its HF directory and its GGUF)."""
    if req.model == TINY and not Path(req.model).exists():
        try:
            from provision.tiny_model import ensure_tiny_model
        except ImportError as e:
            raise OperationFailed(
                f"the tiny model needs the smoke extras (pip install 'xinfer-setup[smoke]'): {e}"
            ) from None
        tiny = ensure_tiny_model()
        return [replace(local_candidate(p), served_name=TINY) for p in (tiny.hf_dir, tiny.gguf_path)]

    def registry() -> Path | None:
        # The registry of the Xinference installed here (with --profile too: the other machine's
        # engines are hypothetical, the registry files must be real).
        from provision.install.receipt import installed_backends

        for installed in (installed_backends(req.venv_root), all_installed):
            xinf = installed.get("xinference")
            found = registry_dir(xinf.prefix) if xinf else None
            if found:
                return found
        return None

    opts = SourceOptions(req.revision, req.size, req.model_format, req.quantization)
    return resolve_model(req.model, opts, registry, load_fit_facts())


def host_and_installed(req: ServeRequest) -> tuple[HostProfile, dict[str, InstalledBackend]]:
    """This machine and its installed engines, or (--profile) another machine and the
    engines `plan --auto` would install there, at the places install would put them."""
    if req.profile_path is None:
        from provision.install.receipt import installed_backends
        from provision.probe import probe_host

        return probe_host(), installed_backends(req.venv_root)
    from provision.install.envs import locate
    from provision.plan import PlanRequest
    from provision.profile import load_profile

    profile = load_profile(req.profile_path)
    try:
        from provision.planner import load_recipes, make_plan
    except ImportError as e:
        raise OperationFailed(f"the planner is not available ({e})") from None
    plan = make_plan(profile, PlanRequest(), load_recipes())
    envs = locate(plan, req.venv_root)
    return profile, {
        b.name: InstalledBackend(
            b.name, b.version, b.environment, envs[b.environment].prefix, envs[b.environment].python
        )
        for b in plan.installs
        if b.environment in envs
    }


def decide(req: ServeRequest) -> Decision:
    try:
        return _decide(req)
    except NotInstalled as e:
        from provision.install.last_root import noted

        raise noted(e, req.venv_root) from None


def _decide(req: ServeRequest) -> Decision:
    if req.via not in (None, "xinference"):
        raise UserError(f"--via {req.via}: only 'xinference' is supported")
    if req.via and req.api_key:
        raise UserError(
            "--api-key does not apply with --via xinference: Xinference issues its own keys "
            "(bind to a non-loopback --host and serve saves one to a file only you can read)"
        )
    from provision.planner.runtime_env import runtime_env

    profile, all_installed = host_and_installed(req)
    cands = candidates(req, all_installed)
    hint_args = f" --venv {req.venv_root}" if req.venv_root else ""
    installed = installed_for_via(all_installed, hint_args) if req.via else all_installed
    port = req.port or DEFAULT_PORTS["xinference" if req.via else "native"]
    opts = ServeOptions(
        req.engine, req.max_model_len, req.gpus, req.dtype, req.gpu_memory_fraction, req.force
    )
    elsewhere = frozenset(set(all_installed) - set(installed) - {"xinference", "llama-cpp-python"})
    planned = decide_serving(
        cands,
        profile,
        frozenset(installed),
        load_serve_rules(),
        load_fit_facts(),
        opts,
        req.host,
        port,
        hint_args,
        elsewhere,
    )
    served = planned.candidate.served_name
    if req.via:
        from provision.serve.xinference import xinference_command

        xinf_python = all_installed["xinference"].python
        # Xinference puts the model uid in URL paths (/v1/models/{uid}): no "/" from an HF id.
        served = served.replace("/", "--")
        return Decision(
            planned,
            xinference_command(xinf_python, req.host, port),
            req.host,
            port,
            served,
            python=xinf_python,
            env={**runtime_env(profile), **planned.env},
        )
    native = native_decision(req, planned, installed[planned.choice.engine].python, port)
    return replace(native, env={**runtime_env(profile), **native.env})  # provision.planner.runtime_env


def native_decision(req: ServeRequest, planned: Planned, python: Path, port: int) -> Decision:
    """The engine's command. transformers serve names the model by its path and has no API key,
    so it listens on a private loopback port behind our proxy, which answers under the served
    name and checks the key; the other engines get the key through a 0600 file, never argv."""
    from provision.engines.adapters import ADAPTERS

    adapter = ADAPTERS[planned.choice.engine]
    path = planned.candidate.facts.path
    upstream_port = None
    launch = planned.launch
    if not adapter.supports_api_key:
        from provision.engines.server import free_port

        upstream_port = free_port()
        launch = replace(launch, host="127.0.0.1", port=upstream_port)
    argv = adapter.server_command(python, path, launch)
    key_flag = None
    if req.api_key and adapter.api_key_flag:
        key_flag = adapter.api_key_flag
        argv = keyed_command(argv, key_flag)
    return Decision(
        planned,
        argv,
        req.host,
        port,
        planned.candidate.served_name,
        upstream_port=upstream_port,
        python=python,
        env=planned.env,
        api_key_flag=key_flag,
    )


# ---------------------------------------------------------------- serving


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop()


def run_dir(kind: str, port: int) -> Path:
    return paths.serve_run_dir(kind, port)


def serve(req: ServeRequest, decision: Decision, say: Callable[[str], None]) -> None:
    check_port_free(decision.host, decision.port)
    if not is_loopback(decision.host):
        say(
            f"warning: listening on {decision.host}, reachable from other machines"
            + ("" if req.api_key or req.via else "; consider --api-key")
        )
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        decision = materialize(req, decision)
        if req.via:
            _serve_via_xinference(req, decision, say)
        else:
            _serve_native(req, decision, say)
    except (_Stop, KeyboardInterrupt):
        say("stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_forever(server, what: str) -> None:
    while server.process.poll() is None:
        time.sleep(0.5)
    raise OperationFailed(f"{what} exited with code {server.process.returncode}; log: {server.log_path}")


def materialize(req: ServeRequest, d: Decision) -> Decision:
    """The decision with the model's files on disk: a Hugging Face id or a built-in name is
    downloaded into the Hugging Face cache first (cache hits cost nothing)."""
    cand = d.planned.candidate
    if cand.source == "local":
        return d
    from provision.serve.hub import download_snapshot
    from provision.serve.sources import with_local_path

    assert cand.hub_id is not None
    local = with_local_path(cand, download_snapshot(cand.hub_id, cand.revision, cand.hub_file))
    if local.facts.kind == "hf" and local.weights_bytes is None:
        raise OperationFailed(
            f"{cand.hub_id}: the Hugging Face cache has its config but not its weights "
            "(HF_HUB_OFFLINE is set?)"
        )
    planned = replace(d.planned, candidate=local, choice=replace(d.planned.choice, model=local.facts))
    if req.via:
        return replace(d, planned=planned)
    return native_decision(req, planned, d.python or Path(sys.executable), d.port)


def _serve_native(req: ServeRequest, d: Decision, say: Callable[[str], None]) -> None:
    from provision.engines.adapters import ADAPTERS
    from provision.engines.server import ManagedServer, ServerError
    from provision.serve.keys import KEY_FILE_ENV, shown, write_key_file

    rd = run_dir(d.choice.engine, d.port)
    rd.mkdir(parents=True, exist_ok=True)
    listen_port = d.upstream_port or d.port
    env = {**ADAPTERS[d.choice.engine].server_env(rd), **d.env}
    if d.api_key_flag and req.api_key:
        env[KEY_FILE_ENV] = str(write_key_file(rd / "api-key", req.api_key))
    server = ManagedServer(
        d.command,
        host="127.0.0.1" if d.upstream_port else d.host,
        port=listen_port,
        log_path=rd / "server.log",
        api_key=None if d.upstream_port else req.api_key,
        env=env,
        ready_timeout_s=NATIVE_READY_TIMEOUT_S,
    )
    say(f"engine: {d.choice.engine} ({d.choice.reason})")
    say(f"memory: {d.planned.fit.reason}")
    say(f"starting: {shown(d.command, d.api_key_flag)}")
    say(f"log: {server.log_path}")
    try:
        try:
            ready_s = server.start()
        except ServerError as e:
            raise OperationFailed(f"{d.choice.engine} did not start: {e}; log: {server.log_path}") from None
        finally:
            (rd / "api-key").unlink(missing_ok=True)
        guard = None
        if d.upstream_port:
            from provision.serve.keyguard import KeyGuard

            upstream_name = server.models[0] if server.models else str(d.choice.model.path)
            guard = KeyGuard(
                d.host, d.port, "127.0.0.1", d.upstream_port, req.api_key, d.served_name, upstream_name
            )
            guard.start()
        try:
            say(f"ready in {ready_s:.1f} s")
            _announce(say, d.host, d.port, d.served_name, "the --api-key you gave" if req.api_key else None)
            _wait_forever(server, d.choice.engine)
        finally:
            if guard:
                guard.stop()
    finally:
        server.stop()


def _serve_via_xinference(req: ServeRequest, d: Decision, say: Callable[[str], None]) -> None:
    from provision.engines.server import ServerError
    from provision.serve.xinference import (
        XinferenceApi,
        XinferenceServer,
        provisioned_find_links,
        xinference_env,
    )

    auth = not is_loopback(d.host)
    rd = run_dir("xinference", d.port)
    home = rd / "home"
    # A fresh XINFERENCE_HOME per run: no registrations or accounts from an earlier run.
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    server = XinferenceServer(
        d.command,
        host=d.host,
        port=d.port,
        log_path=rd / "xinference.log",
        env={**xinference_env(home, auth, d.python, provisioned_find_links()), **d.env},
        ready_timeout_s=XINFERENCE_READY_TIMEOUT_S,
    )
    say(f"engine: {d.choice.engine} via Xinference ({d.choice.reason})")
    say(f"log: {server.log_path}")
    started = time.perf_counter()
    try:
        try:
            server.start()
        except ServerError as e:
            raise OperationFailed(f"xinference-local did not start: {e}; log: {server.log_path}") from None
        api = XinferenceApi(f"http://{_client_host(d.host)}:{d.port}")
        key_note = None
        if auth:
            credentials = rd / "credentials.json"
            api.setup_admin_and_key(home, credentials)
            key_note = f"the api_key in {credentials} (readable only by you)"
        uid = api.register_and_launch(d.choice.model, d.served_name, d.choice.engine, d.choice.family)
        say(f"ready in {time.perf_counter() - started:.1f} s")
        _announce(say, d.host, d.port, uid, key_note)
        _wait_forever(server, "xinference-local")
    finally:
        server.stop()


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host


def _announce(say: Callable[[str], None], host: str, port: int, model: str, key_note: str | None) -> None:
    say(f"OpenAI base URL: http://{_client_host(host) if ':' not in host else f'[{host}]'}:{port}/v1")
    say(f"model: {model}")
    if key_note:
        say(f"API key: {key_note}")
    say("Ctrl-C to stop")
    sys.stdout.flush()
