"""Disk space: what the planned installs need, and a refusal up front when a filesystem lacks it."""

from __future__ import annotations

import shutil
from pathlib import Path

from provision.backends import backend
from provision.errors import OperationFailed
from provision.install.torch_source import pypi_default_build, pypi_defaults
from provision.plan import Plan

# Torch builds' disk use (MB); each backend's own is its recipe's disk_mb. Checked before
# starting so a full disk is refused up front.
TORCH_DISK_MB = {"cpu": 1200, "mps": 1000}
TORCH_GPU_DISK_MB = 7000


def estimate_disk_mb(plan: Plan, todo: list[str], shared_builds: bool = False) -> int:
    """shared_builds: uv hard-links every environment's files from one cache on the same file
    system, so the same torch build in two environments (main's and SGLang's 2.14.1) is stored
    once: measured on a GPU target's three environments, 26 GB of files, 0.02 GB not shared."""
    total = 0
    for name in todo:
        total += backend(name).disk_mb
    counted: set[tuple[str, str]] = set()
    pypi = pypi_defaults() if shared_builds else ()
    platform = f"{plan.profile.os.system}-{plan.profile.os.arch}"
    for env in plan.environments:
        if env.torch is not None and any(b in todo for b in env.backends):
            # The build installed: PyPI's own where it is the variant (main's open spec -> 2.14.1).
            on_pypi = pypi_default_build(pypi, env.torch.variant, env.torch.version_spec, platform)
            build = (env.torch.variant, f"=={on_pypi.torch}" if on_pypi else env.torch.version_spec or "")
            if shared_builds and build in counted:
                continue
            counted.add(build)
            total += TORCH_DISK_MB.get(env.torch.variant, TORCH_GPU_DISK_MB)
    return total


def same_file_system(a: Path, b: Path) -> bool:
    """Whether two paths (or their nearest existing parents) are on one file system."""

    def existing(p: Path) -> Path:
        while not p.exists() and p != p.parent:
            p = p.parent
        return p

    try:
        return existing(a).stat().st_dev == existing(b).stat().st_dev
    except OSError:
        return False


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
