"""Install xinfer-setup into <root>/tool from a directory of wheels, with no package index.

Runs with the host's own Python (stdlib only, any Python >= 3.10): uv's binary is taken out of
the uv wheel in the directory, makes the venv and installs offline. Prints one JSON line.
A venv whose recorded wheel id matches is left alone (a re-run changes nothing).
"""

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tar", required=True)
    p.add_argument("--wheels", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--wheel", required=True)
    p.add_argument("--id", required=True)
    a = p.parse_args()
    wheels, root = Path(a.wheels), Path(a.root)
    tool = root / "tool"
    marker = tool / ".xinfer-setup-wheel-id"
    if (tool / "bin" / "xinfer-setup").exists() and marker.exists() and marker.read_text().strip() == a.id:
        print(json.dumps({"changed": False, "tool": str(tool)}))
        return
    # The pushed tar holds the wheel set: unpacked fresh, so no wheel of an older set lingers.
    if wheels.exists():
        shutil.rmtree(wheels)
    wheels.mkdir(parents=True)
    with tarfile.open(a.tar) as tf:
        for member in tf.getmembers():
            if member.isfile() and "/" not in member.name and not member.name.startswith("."):
                src = tf.extractfile(member)
                assert src is not None  # a regular file's member always has a body
                with src, (wheels / member.name).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
    uv_wheels = sorted(wheels.glob("uv-*.whl"))
    if not uv_wheels:
        print(json.dumps({"changed": False, "reason": f"no uv wheel in {wheels}"}))
        sys.exit(1)
    uv = root / "bootstrap" / "uv"
    uv.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(uv_wheels[0]) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/scripts/uv"))
        uv.write_bytes(zf.read(name))
    uv.chmod(uv.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = {**os.environ, "UV_NO_CONFIG": "1", "UV_OFFLINE": "1"}
    steps = []
    if not (tool / "bin" / "python").exists():
        steps.append([str(uv), "venv", "--python", sys.executable, str(tool)])
    steps.append(
        [
            str(uv),
            "pip",
            "install",
            "--python",
            str(tool / "bin" / "python"),
            "--no-index",
            "--find-links",
            str(wheels),
            "--reinstall-package",
            "xinfer-setup",
            str(wheels / a.wheel),
        ]
    )
    for argv in steps:
        out = subprocess.run(argv, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
            print(json.dumps({"changed": True, "reason": " | ".join(lines[-4:])[-800:]}))
            sys.exit(1)
    marker.write_text(a.id + "\n")
    print(json.dumps({"changed": True, "tool": str(tool)}))


if __name__ == "__main__":
    main()
