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
from dataclasses import dataclass, field
from pathlib import Path

from provision import paths
from provision.engines.adapters import EngineAdapter, LaunchSettings
from provision.errors import OperationFailed, UserError
from provision.install.receipt import InstalledBackend
from provision.profile import HostProfile
from provision.serve.choice import EngineChoice, choose_engine
from provision.serve.model_facts import ModelFacts, inspect_model
from provision.serve.rules import load_serve_rules

TINY = "tiny"
DEFAULT_PORTS = {"native": 8000, "xinference": 9997}
NATIVE_READY_TIMEOUT_S = 900.0  # a 70B model from a slow disk
XINFERENCE_READY_TIMEOUT_S = 300.0
# The flag after which each adapter's command names the served model (the adapters say "tiny").

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


@dataclass(frozen=True)
class Decision:
    choice: EngineChoice
    command: list[str]
    host: str
    port: int
    served_name: str
    # engine-native with an engine that has no API key: where the engine itself listens
    upstream_port: int | None = None
    python: Path | None = None
    env_notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"engine": self.choice.engine, "reason": self.choice.reason, "command": self.command,
                "model": str(self.choice.model.path), "format": self.choice.model.format,
                "quantization": self.choice.model.quantization, "family": self.choice.family,
                "host": self.host, "port": self.port}


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
        raise UserError("xinference is not installed here: "
                        f"run `xinfer-setup install --backend xinference{hint_args}`")
    return {name: b for name, b in installed.items()
            if b.environment == xinf.environment and name not in ("xinference", "llama-cpp-python")}


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


def model_forms(model: str) -> list[ModelFacts]:
    if model == TINY and not Path(model).exists():
        try:
            from provision.tiny_model import ensure_tiny_model
        except ImportError as e:
            raise OperationFailed(
                f"the tiny model needs the smoke extras (pip install 'xinfer-setup[smoke]'): {e}") from None
        tiny = ensure_tiny_model()
        return [inspect_model(tiny.hf_dir), inspect_model(tiny.gguf_path)]
    return [inspect_model(Path(model))]


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
    return profile, {b.name: InstalledBackend(b.name, b.version, b.environment, envs[b.environment].prefix,
                                              envs[b.environment].python)
                     for b in plan.installs if b.environment in envs}


def decide(req: ServeRequest) -> Decision:
    if req.via not in (None, "xinference"):
        raise UserError(f"--via {req.via}: only 'xinference' is supported")
    if req.via and req.api_key:
        raise UserError("--api-key does not apply with --via xinference: Xinference issues its own keys "
                        "(bind to a non-loopback --host and serve saves one to a file only you can read)")
    forms = model_forms(req.model)
    profile, all_installed = host_and_installed(req)
    hint_args = f" --venv {req.venv_root}" if req.venv_root else ""
    installed = installed_for_via(all_installed, hint_args) if req.via else all_installed
    choice = choose_engine(forms, profile, frozenset(installed), load_serve_rules(), req.engine, hint_args)
    port = req.port or DEFAULT_PORTS["xinference" if req.via else "native"]
    gpu = bool(profile.nvidia_gpus)
    if req.via:
        from provision.serve.xinference import xinference_command

        xinf_python = all_installed["xinference"].python
        return Decision(choice, xinference_command(xinf_python, req.host, port), req.host, port,
                        TINY if req.model == TINY else choice.model.name, python=xinf_python)
    from provision.engines.adapters import ADAPTERS

    adapter = ADAPTERS[choice.engine]
    python = installed[choice.engine].python
    guard = req.api_key is not None and not adapter.supports_api_key
    upstream_port = None
    listen_host, listen_port = req.host, port
    if guard:
        from provision.engines.server import free_port

        upstream_port = free_port()
        listen_host, listen_port = "127.0.0.1", upstream_port
    served = TINY if req.model == TINY else choice.model.name
    launch = _launch_settings(adapter, served, listen_host, listen_port, gpu)
    argv = adapter.server_command(python, choice.model.path, launch, None if guard else req.api_key)
    # transformers serve takes no alias: it names the model by its path.
    served = adapter.served_model(choice.model.path) or served
    return Decision(choice, argv, req.host, port, served, upstream_port=upstream_port, python=python)


def _launch_settings(adapter: EngineAdapter, served: str, host: str, port: int, gpu: bool) -> LaunchSettings:
    # The settings serve has always used; sizing them to the model and the GPUs is serve's next step.
    return LaunchSettings(served_name=served, host=host, port=port, gpu=gpu,
                          dtype="float32" if adapter.float32 else "float16", context_length=2048,
                          gpu_memory_fraction=0.2 if gpu else None, enforce_eager=True, f32_kv_cache=True)


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
        say(f"warning: listening on {decision.host}, reachable from other machines"
            + ("" if req.api_key or req.via else "; consider --api-key"))
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
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


def _serve_native(req: ServeRequest, d: Decision, say: Callable[[str], None]) -> None:
    from provision.engines.adapters import ADAPTERS
    from provision.engines.server import ManagedServer, ServerError

    rd = run_dir(d.choice.engine, d.port)
    rd.mkdir(parents=True, exist_ok=True)
    listen_port = d.upstream_port or d.port
    server = ManagedServer(d.command, host="127.0.0.1" if d.upstream_port else d.host, port=listen_port,
                           log_path=rd / "server.log", api_key=None if d.upstream_port else req.api_key,
                           env=ADAPTERS[d.choice.engine].server_env(rd),
                           ready_timeout_s=NATIVE_READY_TIMEOUT_S)
    say(f"engine: {d.choice.engine} ({d.choice.reason})")
    say(f"starting: {' '.join(d.command)}")
    say(f"log: {server.log_path}")
    try:
        try:
            ready_s = server.start()
        except ServerError as e:
            raise OperationFailed(f"{d.choice.engine} did not start: {e}; log: {server.log_path}") from None
        guard = None
        if d.upstream_port:
            from provision.serve.keyguard import KeyGuard

            guard = KeyGuard(d.host, d.port, "127.0.0.1", d.upstream_port, req.api_key)
            guard.start()
        try:
            name = server.models[0] if server.models else d.served_name
            say(f"ready in {ready_s:.1f} s")
            _announce(say, d.host, d.port, name, "the --api-key you gave" if req.api_key else None)
            _wait_forever(server, d.choice.engine)
        finally:
            if guard:
                guard.stop()
    finally:
        server.stop()


def _serve_via_xinference(req: ServeRequest, d: Decision, say: Callable[[str], None]) -> None:
    from provision.engines.server import ServerError
    from provision.serve.xinference import XinferenceApi, XinferenceServer, xinference_env

    auth = not is_loopback(d.host)
    rd = run_dir("xinference", d.port)
    home = rd / "home"
    # A fresh XINFERENCE_HOME per run: no registrations or accounts from an earlier run.
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    server = XinferenceServer(d.command, host=d.host, port=d.port, log_path=rd / "xinference.log",
                              env=xinference_env(home, auth), ready_timeout_s=XINFERENCE_READY_TIMEOUT_S)
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
