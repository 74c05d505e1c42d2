"""`uv pip check` on a fresh `install --auto` reports `timm requires torchvision`: the installer
removed torchvision on purpose (no build for the local-tagged CPU torch). `verify` and `status`
say so, quoting the installer's own note, so a user who runs `pip check` is not left guessing."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from provision.install.executor import uv_bin
from provision.install.state import Dist, EnvState, deliberate_gaps
from tests.support.cli import cli

NOTE = "removed torchvision 0.28.0: it is not built for torch 2.13.0+cpu and no matching build is reachable"


def _state(*dists: Dist) -> EnvState:
    markers = {"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}
    return EnvState({d.name: d for d in dists}, markers)


TORCH = Dist("torch", "2.13.0+cpu", (), None)
TIMM = Dist("timm", "1.0.31", ("torch", "torchvision", 'pytest; extra == "test"'), None)


def test_a_requirement_on_the_removed_torchvision_is_named_with_the_installers_reason():
    (gap,) = deliberate_gaps(_state(TORCH, TIMM), ["something else", NOTE])
    requirer, sentence = gap
    assert requirer == "timm"
    assert sentence.startswith("`pip check` reports timm 1.0.31 requires torchvision, which is not installed")
    assert "known and deliberate" in sentence and NOTE in sentence


def test_no_gap_when_torchvision_is_there_or_torch_is_not_local_tagged_or_the_marker_is_off():
    tv = Dist("torchvision", "0.28.0+cpu", (), None)
    assert deliberate_gaps(_state(TORCH, TIMM, tv), [NOTE]) == []
    # PyPI's torch: a missing torchvision is not something the installer chose.
    assert deliberate_gaps(_state(Dist("torch", "2.13.0", (), None), TIMM), [NOTE]) == []
    windows_only = Dist("timm", "1.0.31", ('torchvision; sys_platform == "win32"',), None)
    assert deliberate_gaps(_state(TORCH, windows_only), [NOTE]) == []


@pytest.mark.slow
def test_every_incompatibility_pip_check_reports_is_explained_by_verify_and_status(provisioned_root):
    python = provisioned_root / "main" / "bin" / "python"
    check = subprocess.run(
        [uv_bin(), "pip", "check", "--python", str(python)], capture_output=True, text=True
    )
    reported = re.findall(r"The package `([^`]+)` requires `([^`>=<!~ ;\[]+)", check.stdout + check.stderr)
    verified = cli("verify", "--venv", str(provisioned_root), "--json")
    assert verified.returncode == 0, verified.stderr[-2000:]
    notes = [c["detail"] for c in json.loads(verified.stdout)["checks"] if c["name"] == "pip check"]
    status = cli("status", "--venv", str(provisioned_root))
    assert status.returncode == 0, status.stderr[-2000:]
    status_notes = [ln.strip() for ln in status.stdout.splitlines() if ln.strip().startswith("note: ")]
    assert len(notes) == len(status_notes) == len(reported), (check.stdout, notes, status_notes)
    for requirer, missing in reported:
        said = [n for n in notes if f"reports {requirer} " in n and f"requires {missing}," in n]
        assert said and "known and deliberate" in said[0] and f"removed {missing} " in said[0], notes
    print(f"\nuv pip check: {reported}; verify and status explain each")
