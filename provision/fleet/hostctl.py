"""The host-side helper the fleet playbooks call: `python -m provision.fleet.hostctl CMD ...`.

It runs on each host, in the tool environment (<root>/tool) that `fleet probe` bootstraps, and
prints one JSON object on stdout (Ansible gives it back to the controller). Commands:

  start     run xinference-supervisor / xinference-worker as a systemd unit where PID 1 is
            systemd, else as a supervised daemon: pid file <root>/run/<role>.pid, log
            <root>/logs/<role>.log, restarted when it dies (bounded); idempotent (same
            settings and alive: nothing done)
  stop      stop it and every process it left (marked by XINFER_FLEET_DAEMON in their env)
  status    per role started here: alive, pid, settings (from systemd where it runs the role)
  reach     TCP connects to address:port targets, each with its result
  auth      Xinference's first-run admin setup and an API key, kept in a 0600 file here
  install   `xinfer-setup install --from-bundle` of the pushed bundle; says whether it changed

Secrets never go on a command line or into a log: `auth` writes them to a 0600 file only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from provision.fleet import units
from provision.fleet.pushed import check_pushed_wheel, unpack
from provision.lock import pid_alive

MARKER = "XINFER_FLEET_DAEMON"
READY_TIMEOUT_S = 180
# A daemon that dies this many times within RESTART_WINDOW_S is left down (it would only loop).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 120


def _emit(data: dict[str, Any], code: int = 0) -> None:
    print(json.dumps(data))
    sys.exit(code)


def _paths(root: Path, role: str) -> dict[str, Path]:
    return {
        "pid": root / "run" / f"{role}.pid",
        "settings": root / "run" / f"{role}.json",
        "log": root / "logs" / f"{role}.log",
    }


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def marked_pids(tag: str) -> list[int]:
    """Processes whose environment carries our marker for this daemon (the daemon's leftovers)."""
    needle = f"{MARKER}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def settings_digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ supervised daemon


def supervise(settings_path: Path) -> None:
    """The daemon itself: runs the server, restarts it when it dies, stops it on SIGTERM."""
    settings = json.loads(settings_path.read_text())
    paths = _paths(Path(settings["root"]), settings["role"])
    env = {**os.environ, **settings["env"], MARKER: settings["tag"]}
    stopping = False
    child: subprocess.Popen | None = None

    def on_term(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    deaths: list[float] = []
    while not stopping:
        with paths["log"].open("ab") as log:
            child = subprocess.Popen(
                settings["argv"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd=settings["root"],
            )
        code = child.wait()
        if stopping:
            break
        now = time.monotonic()
        deaths = [t for t in deaths if now - t < RESTART_WINDOW_S] + [now]
        with paths["log"].open("a") as note:
            note.write(f"\n[xinfer-setup] {settings['role']} exited with {code}; ")
            if len(deaths) >= MAX_RESTARTS:
                note.write(f"{len(deaths)} exits within {RESTART_WINDOW_S} s: left down\n")
                break
            note.write("restarting in 2 s\n")
        time.sleep(2)
    if child is not None:
        _kill_group(child.pid, grace=15)
    paths["pid"].unlink(missing_ok=True)


def _kill_group(pgid: int, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _stop_daemon(root: Path, role: str, tag: str) -> bool:
    """Stop the daemon and anything left with its marker; True when something was running."""
    paths = _paths(root, role)
    pid = read_pid(paths["pid"])
    was = pid is not None
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # Model processes Xinference started in sessions of their own still carry the marker.
    left = marked_pids(tag)
    for p in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while left and time.monotonic() < deadline:
        left = [p for p in left if pid_alive(p)]
        time.sleep(0.2)
    for p in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    paths["pid"].unlink(missing_ok=True)
    return was or bool(left)


def _start_systemd(settings: dict[str, Any], paths: dict[str, Path]) -> dict[str, Any]:
    """A system unit (Restart=on-failure does the supervising) run as the service user;
    rewritten and restarted when changed. The settings file records that the role was started."""
    unit = units.unit_name(settings["role"], settings["tag"])
    user = settings["user"]
    why = units.ensure_user(user)
    program = settings["argv"][0]
    if why is None and not units.can_run(user, program):
        why = (
            f"the service user {user} cannot run {program} (a directory above xinfer_root is private to "
            "its owner): set xinfer_root to a shared directory such as /opt/xinfer-setup, or "
            "xinfer_service_user=root"
        )
    if why is not None:
        _emit({"changed": False, "manager": "systemd", "reason": why}, 1)
    if user != "root":
        # The daemon writes Xinference's home (auth db, model state) and its own log.
        home = Path(settings["env"].get("XINFERENCE_HOME") or Path(settings["root"]) / "xinference")
        home.mkdir(parents=True, exist_ok=True)
        paths["log"].touch()
        subprocess.run(["chown", "-R", user, str(home), str(paths["log"])], check=True)
    text = units.unit_text({**settings, "marker": MARKER}, paths["log"], user)
    path = units.UNIT_DIR / unit
    old = path.read_text() if path.exists() else None
    paths["settings"].write_text(json.dumps({**settings, "unit": unit}, indent=2))
    active = subprocess.run(["systemctl", "is-active", "--quiet", unit]).returncode == 0
    if old == text and active:
        return {"changed": False, "manager": "systemd", "unit": unit}
    path.write_text(text)
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    subprocess.run(["systemctl", "enable", unit], check=True, capture_output=True)
    subprocess.run(["systemctl", "restart", unit], check=True)
    return {"changed": True, "manager": "systemd", "unit": unit}


def start(args: argparse.Namespace) -> None:
    root = Path(args.root).expanduser().absolute()
    paths = _paths(root, args.role)
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    env = json.loads(args.env or "{}")
    program = json.loads(args.argv)[0]
    if not Path(program).exists():
        reason = f"{program} is not installed: run `xinfer-setup fleet install` first"
        _emit({"changed": False, "reason": reason}, 1)
    settings = {
        "role": args.role,
        "root": str(root),
        "tag": f"{root}:{args.role}",
        "argv": json.loads(args.argv),
        "env": env,
        "user": args.user,
        "ready": {"address": args.address, "port": args.ready_port, "http": args.ready_http},
    }
    settings["digest"] = settings_digest(settings)
    if units.systemd_runs() and not args.no_systemd:
        out = _start_systemd(settings, paths)
    else:
        old = None
        with contextlib.suppress(OSError, ValueError):
            old = json.loads(paths["settings"].read_text())
        pid = read_pid(paths["pid"])
        if pid is not None and old and old.get("digest") == settings["digest"]:
            out = {"changed": False, "manager": "daemon", "pid": pid}
        else:
            if pid is not None or marked_pids(settings["tag"]):
                _stop_daemon(root, args.role, settings["tag"])
            paths["settings"].write_text(json.dumps(settings, indent=2))
            with paths["log"].open("ab") as log:
                log.write(f"\n[xinfer-setup] starting {args.role}: {' '.join(settings['argv'])}\n".encode())
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "provision.fleet.hostctl", "supervise", str(paths["settings"])],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    cwd=str(root),
                    close_fds=True,
                )
            paths["pid"].write_text(str(daemon.pid))
            out = {"changed": True, "manager": "daemon", "pid": daemon.pid}
    ok, detail = wait_ready(settings, paths, out)
    out.update(role=args.role, ready=ok, log=str(paths["log"]), address=f"{args.address}:{args.ready_port}")
    if not ok:
        out["reason"] = detail
        _emit(out, 1)
    _emit(out)


def _http_up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status < 500
    except urllib.error.HTTPError as e:
        return e.code < 500
    except (urllib.error.URLError, OSError):
        return False


def _port_open(address: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_ready(settings: dict[str, Any], paths: dict[str, Path], out: dict[str, Any]) -> tuple[bool, str]:
    ready = settings["ready"]
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready["http"]:
            if _http_up(f"http://{ready['address']}:{ready['port']}{ready['http']}"):
                return True, ""
        elif _port_open(ready["address"], ready["port"]):
            return True, ""
        if out.get("manager") == "daemon" and read_pid(paths["pid"]) is None:
            return False, f"{settings['role']} exited; log {paths['log']}: {_tail(paths['log'])}"
        time.sleep(1)
    return False, (
        f"{settings['role']} not answering on {ready['address']}:{ready['port']} after "
        f"{READY_TIMEOUT_S} s; log {paths['log']}: {_tail(paths['log'])}"
    )


def _tail(path: Path, n: int = 6) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(ln.strip() for ln in lines[-n:])[-900:]


def stop(args: argparse.Namespace) -> None:
    root = Path(args.root).expanduser().absolute()
    tag = f"{root}:{args.role}"
    # Stopped on purpose: status then says "not started", not "dead".
    _paths(root, args.role)["settings"].unlink(missing_ok=True)
    if units.systemd_runs() and not args.no_systemd:
        unit = units.unit_name(args.role, tag)
        if (units.UNIT_DIR / unit).exists():
            was = subprocess.run(["systemctl", "is-active", "--quiet", unit]).returncode == 0
            subprocess.run(["systemctl", "disable", "--now", unit], capture_output=True)
            (units.UNIT_DIR / unit).unlink(missing_ok=True)
            subprocess.run(["systemctl", "daemon-reload"], capture_output=True)
            _emit({"changed": was, "role": args.role, "manager": "systemd"})
    was = _stop_daemon(root, args.role, tag)
    _emit({"changed": was, "role": args.role, "manager": "daemon", "left": marked_pids(tag)})


def role_status(root: Path, role: str, under_systemd: bool) -> dict[str, Any] | None:
    """A role started here (its settings file), as the thing that runs it sees it: systemd for a
    unit, the pid file's process for a supervised daemon. None: never started, or stopped."""
    paths = _paths(root, role)
    settings: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        settings = json.loads(paths["settings"].read_text())
    unit = units.unit_name(role, f"{root}:{role}")
    # A unit file is enough: units started by an earlier xinfer-setup have no settings file.
    if under_systemd and (units.UNIT_DIR / unit).exists():
        state = units.unit_state(unit)
        return {
            **state,
            "manager": "systemd",
            "unit": unit,
            "digest": settings.get("digest"),
            "log": str(paths["log"]),
        }
    if not settings:
        return None
    pid = read_pid(paths["pid"])
    return {
        "alive": pid is not None,
        "pid": pid,
        "manager": "daemon",
        "state": "running"
        if pid is not None
        else f"its daemon is gone; log {paths['log']}: {_tail(paths['log'], 3)}",
        "digest": settings.get("digest"),
        "log": str(paths["log"]),
    }


def status(args: argparse.Namespace) -> None:
    root = Path(args.root).expanduser().absolute()
    under_systemd = units.systemd_runs() and not args.no_systemd
    roles = {}
    for role in ("supervisor", "worker"):
        found = role_status(root, role, under_systemd)
        if found is not None:
            roles[role] = found
    receipt = root / "envs" / "main" / "share" / "xinfer-setup" / "receipt.json"
    _emit({"changed": False, "roles": roles, "receipt": str(receipt) if receipt.exists() else None})


def reach(args: argparse.Namespace) -> None:
    """Each target NAME=ADDRESS:PORT[:refused-ok]. A refused connection proves the address routes
    (the host answered); with refused-ok that is enough (the server is not started yet)."""
    results = []
    for t in args.target:
        name, spec = t.split("=", 1)
        parts = spec.rsplit(":", 2)
        refused_ok = parts[-1] == "refused-ok"
        address, port = (parts[0], parts[1]) if refused_ok else spec.rsplit(":", 1)
        try:
            with socket.create_connection((address, int(port)), timeout=args.timeout):
                results.append({"name": name, "target": f"{address}:{port}", "ok": True, "detail": "open"})
        except ConnectionRefusedError:
            results.append(
                {
                    "name": name,
                    "target": f"{address}:{port}",
                    "ok": refused_ok,
                    "detail": "connection refused (routes; nothing listens yet)",
                }
            )
        except OSError as e:
            detail = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
            results.append({"name": name, "target": f"{address}:{port}", "ok": False, "detail": detail})
    bad = [r for r in results if not r["ok"]]
    out: dict[str, Any] = {"changed": False, "results": results}
    if bad:
        out["reason"] = "; ".join(f"cannot reach {r['name']} at {r['target']} ({r['detail']})" for r in bad)
        _emit(out, 1)
    _emit(out)


def auth(args: argparse.Namespace) -> None:
    """Admin setup + an API key, once; later runs check the stored credentials still log in."""
    from provision.serve.xinference import XinferenceApi

    creds_path = Path(args.out).expanduser().absolute()
    api = XinferenceApi(args.url)
    if creds_path.exists():
        creds = json.loads(creds_path.read_text())
        try:
            api.call("POST", "/token", {"username": creds["username"], "password": creds["password"]})
            _emit({"changed": False, "credentials": str(creds_path)})
        except Exception as e:  # noqa: BLE001 - any failure means the stored credentials are stale
            stale = str(e)
        creds_path.unlink()
    else:
        stale = ""
    try:
        api.setup_admin_and_key(Path(args.home).expanduser(), creds_path)
    except Exception as e:  # noqa: BLE001 - reported as this host's reason
        reason = f"auth setup failed: {e}" + (f" (stored credentials were stale: {stale})" if stale else "")
        _emit({"changed": False, "reason": reason}, 1)
    _emit({"changed": True, "credentials": str(creds_path)})


def _installed_state(receipt_path: Path) -> Any:
    try:
        r = json.loads(receipt_path.read_text())
    except (OSError, ValueError):
        return None
    return (
        {e["name"]: sorted(e.get("packages", [])) for e in r.get("environments", [])},
        {b["name"]: b.get("status") for b in r.get("backends", [])},
    )


def install(args: argparse.Namespace) -> None:
    """`xinfer-setup install --from-bundle`: the bundle the controller pushed is the only source."""
    root = Path(args.root).expanduser().absolute()
    if args.llama_sha256:
        why = check_pushed_wheel(
            root / "cache" / "xinfer-setup" / "wheelhouse" / args.llama_key, args.llama_sha256
        )
        if why is not None:
            _emit({"changed": False, "reason": why}, 1)
    bundle = unpack(Path(args.tar), root / "bundles" / args.bundle_id)
    env = {
        **os.environ,
        # Our wheelhouse (a pushed llama-cpp-python build) and data live under the host's root.
        "XDG_CACHE_HOME": str(root / "cache"),
        "XDG_DATA_HOME": str(root / "data"),
    }
    tool_bin = Path(sys.executable).parent / "xinfer-setup"
    argv = [str(tool_bin), "install", "--from-bundle", str(bundle), "--venv", str(root / "envs"), "--json"]
    log = root / "logs" / "install.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    receipt_path = root / "envs" / "main" / "share" / "xinfer-setup" / "receipt.json"
    before = _installed_state(receipt_path)
    started = time.monotonic()
    with log.open("a") as f:
        f.write(f"\n[xinfer-setup] {' '.join(argv)}\n")
        f.flush()
        out = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=f, text=True)
    try:
        receipt = json.loads(out.stdout)
    except ValueError:
        receipt = None
    seconds = round(time.monotonic() - started, 1)
    if receipt is None:
        reason = f"install exit {out.returncode}: {_tail(log, 4)}"
        _emit({"changed": True, "seconds": seconds, "reason": reason}, 1)
    # Changed means what is installed changed, not that a receipt was rewritten.
    changed = _installed_state(receipt_path) != before
    failed = [
        f"{b['name']}: {(b.get('reason') or '')[:300]}"
        for b in receipt["backends"]
        if b.get("status") == "failed"
    ]
    result = {
        "changed": changed,
        "seconds": seconds,
        "exit": out.returncode,
        "receipt": str(root / "envs" / "main" / "share" / "xinfer-setup" / "receipt.json"),
    }
    if out.returncode != 0:
        result["reason"] = "; ".join(failed) or f"install exit {out.returncode}: {_tail(log, 4)}"
        _emit(result, 1)
    _emit(result)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hostctl")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("start")
    p.add_argument("--role", choices=("supervisor", "worker"), required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--argv", required=True, help="the server's argv as a JSON list")
    p.add_argument("--env", default="{}", help="extra environment as a JSON object")
    p.add_argument("--address", required=True)
    p.add_argument("--ready-port", type=int, required=True)
    p.add_argument("--ready-http", default=None, help="a path answered over HTTP when ready")
    p.add_argument("--user", default=units.DEFAULT_SERVICE_USER, help="the systemd unit's User=")
    p.add_argument("--no-systemd", action="store_true")
    p.set_defaults(fn=start)
    p = sub.add_parser("stop")
    p.add_argument("--role", choices=("supervisor", "worker"), required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--no-systemd", action="store_true")
    p.set_defaults(fn=stop)
    p = sub.add_parser("status")
    p.add_argument("--root", required=True)
    p.add_argument("--no-systemd", action="store_true")
    p.set_defaults(fn=status)
    p = sub.add_parser("reach")
    p.add_argument("--target", action="append", default=[])
    p.add_argument("--timeout", type=float, default=3.0)
    p.set_defaults(fn=reach)
    p = sub.add_parser("auth")
    p.add_argument("--url", required=True)
    p.add_argument("--home", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=auth)
    p = sub.add_parser("install")
    p.add_argument("--root", required=True)
    p.add_argument("--tar", required=True, help="the pushed bundle as a tar")
    p.add_argument("--bundle-id", required=True)
    p.add_argument("--llama-key", default="", help="the wheelhouse key of the pushed llama-cpp-python build")
    p.add_argument("--llama-sha256", default="", help="its sha256, as the controller checked it")
    p.set_defaults(fn=install)
    p = sub.add_parser("supervise")
    p.add_argument("settings")
    p.set_defaults(fn=lambda a: supervise(Path(a.settings)))
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
