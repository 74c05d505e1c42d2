"""Disk space: what the planned installs need, and a refusal up front when a filesystem lacks it."""

from __future__ import annotations

import shutil
from pathlib import Path

from provision.backends import backend
from provision.errors import OperationFailed
from provision.plan import Plan

# Torch builds' disk use (MB); each backend's own is its recipe's disk_mb. Checked before
# starting so a full disk is refused up front.
TORCH_DISK_MB = {"cpu": 1200, "mps": 1000}
TORCH_GPU_DISK_MB = 7000


def estimate_disk_mb(plan: Plan, todo: list[str]) -> int:
    total = 0
    for name in todo:
        total += backend(name).disk_mb
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
