"""The installer: carries a Plan out into real environments and records a receipt of the result.

API: install_plan(plan, venv_root, installer, options=InstallOptions(...)) -> Receipt (install.run);
read_receipt / installed_backends (install.receipt); verify_receipt (install.verify_receipt).
"""

from __future__ import annotations

from typing import Any

__all__ = ["InstallOptions", "install_plan", "installed_backends", "read_receipt", "verify_receipt"]

# Imported on use: reading a receipt (status, smoke) must not load the executor.
_WHERE = {
    "InstallOptions": "provision.install.run",
    "install_plan": "provision.install.run",
    "installed_backends": "provision.install.receipt",
    "read_receipt": "provision.install.receipt",
    "verify_receipt": "provision.install.verify_receipt",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
