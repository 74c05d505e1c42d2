"""What the controller pushed to a host, taken in on the host: the plan's bundle tar unpacked
(plain files only, each kept inside its directory) and the llama-cpp-python build checked
against the sha256 the controller sent before anything is installed from it."""

from __future__ import annotations

import json
from pathlib import Path


def unpack(tar: Path, dest: Path) -> Path:
    """The pushed tar, unpacked once per bundle id (a re-run finds it done); plain files only,
    each kept inside dest."""
    import shutil
    import tarfile

    done = dest / ".unpacked"
    if done.exists():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(tar) as tf:
        for member in tf.getmembers():
            target = (dest / member.name).resolve()
            if not member.isfile() or dest.resolve() not in target.parents:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tf.extractfile(member) as src, target.open("wb") as dst:  # type: ignore[union-attr]
                shutil.copyfileobj(src, dst)
    done.write_text("")
    return dest


def check_pushed_wheel(entry: Path, expected: str) -> str | None:
    """The llama-cpp-python wheel the controller pushed, against the sha256 it sent in this host's
    variables; None when it matches (and its build.json then records that hash), else why not."""
    from provision.install.wheelhouse import sha256_file

    wheels = sorted(entry.glob("*.whl"))
    if len(wheels) != 1:
        return f"the pushed llama-cpp-python build in {entry}: {len(wheels)} wheels, expected 1: refused"
    actual = sha256_file(wheels[0])
    if actual != expected:
        return (
            f"the pushed {wheels[0].name} does not match the sha256 the controller sent "
            f"({expected[:16]}…, here {actual[:16]}…): refused, nothing installed"
        )
    meta_path = entry / "build.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    if meta.get("sha256") != expected:
        meta_path.write_text(json.dumps({**meta, "sha256": expected}, indent=2))
    return None
