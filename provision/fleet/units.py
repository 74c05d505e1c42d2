"""The fleet's daemons as systemd units, where PID 1 on a host is systemd (hostctl's other way is
a supervised daemon with a pid file). Unit text is made by a pure function, so it is checked
with `systemd-analyze verify` in the tests; the unit's state is asked of systemd itself
(`systemctl show`), never of files systemd does not write.

Quoting follows systemd.service(5) "Command lines" and systemd.unit(5) "Specifiers": each
word in double quotes with backslash escapes, `%` doubled (specifiers), `$` doubled in
ExecStart (environment variable substitution).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

UNIT_DIR = Path("/etc/systemd/system")
# The service user when the inventory names none: a system account of its own, never root
# unless asked (xinfer_service_user=root).
DEFAULT_SERVICE_USER = "xinference"
SHOW_PROPERTIES = ("ActiveState", "SubState", "MainPID", "NRestarts")


def systemd_runs() -> bool:
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def unit_name(role: str, tag: str) -> str:
    return f"xinference-{role}-{hashlib.sha256(tag.encode()).hexdigest()[:8]}.service"


def _quoted(word: str, dollar: bool) -> str:
    text = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if dollar:
        text = text.replace("$", "$$")
    return f'"{text}"'


def exec_line(argv: list[str]) -> str:
    """argv as one ExecStart= value: every word survives spaces, quotes, `%` and `$`."""
    return " ".join(_quoted(a, dollar=True) for a in argv)


def unit_text(settings: dict[str, Any], log: Path, user: str) -> str:
    """The unit for a role's settings (argv, env, root, tag). Restart=on-failure does the
    supervising; KillMode=control-group stops the model processes Xinference started too."""
    env = {**settings["env"], settings["marker"]: settings["tag"]}
    env_lines = "".join(f"Environment={_quoted(f'{k}={v}', dollar=False)}\n" for k, v in env.items())
    no_pct = str(log).replace("%", "%%")
    return (
        "[Unit]\n"
        f"Description=Xinference {settings['role']} (xinfer-setup fleet)\n"
        "After=network-online.target\nWants=network-online.target\n\n"
        "[Service]\n"
        f"User={user}\n"
        f"ExecStart={exec_line(settings['argv'])}\n"
        f"WorkingDirectory={str(settings['root']).replace('%', '%%')}\n"
        f"{env_lines}"
        f"StandardOutput=append:{no_pct}\nStandardError=append:{no_pct}\n"
        "Restart=on-failure\nRestartSec=2\nKillMode=control-group\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )


def parse_show(text: str) -> dict[str, str]:
    """`systemctl show --property=A,B UNIT` prints one A=value line per property."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def unit_state(unit: str) -> dict[str, Any]:
    """What systemd says of the unit: alive when active and running, its main pid, restarts."""
    try:
        out = subprocess.run(
            ["systemctl", "show", f"--property={','.join(SHOW_PROPERTIES)}", unit],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"alive": False, "pid": None, "state": f"systemctl show failed: {e}"}
    props = parse_show(out.stdout) if out.returncode == 0 else {}
    return state_of(props, out.stderr.strip() if out.returncode else "")


def state_of(props: dict[str, str], error: str = "") -> dict[str, Any]:
    if not props:
        return {"alive": False, "pid": None, "state": error or "unknown to systemd"}
    pid = int(props.get("MainPID") or 0) or None
    active, sub = props.get("ActiveState", "?"), props.get("SubState", "?")
    return {
        "alive": active == "active" and sub == "running" and pid is not None,
        "pid": pid,
        "state": f"{active} ({sub})",
        "restarts": int(props.get("NRestarts") or 0),
    }


def ensure_user(user: str) -> str | None:
    """The service user, created as a system account when missing; None, or why it cannot be."""
    if user == "root" or subprocess.run(["id", "-u", user], capture_output=True).returncode == 0:
        return None
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
        capture_output=True,
        text=True,
    )
    return None if made.returncode == 0 else f"cannot create the service user {user}: {made.stderr.strip()}"


def can_run(user: str, program: str) -> bool:
    """Whether the user can reach and run the program (a root under /root, 0700, is not)."""
    if user == "root":
        return True
    return (
        subprocess.run(["runuser", "-u", user, "--", "test", "-x", program], capture_output=True).returncode
        == 0
    )
