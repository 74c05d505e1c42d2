"""Air-gapped installs: a bundle made from the plan, and installing from it with no network.

The API the CLI and fleet use:
    make_bundle(plan, out_dir, this_machine=..., dry_run=..., index=..., reporter=...) -> BundleReport
    verify_manifest(bundle_dir) -> Manifest   (raises before anything is touched)
    install_from_bundle(bundle_dir, venv_root=None) -> Receipt
    xinference_offline_env(bundle_dir, xinference_home=None) -> dict[str, str]
"""

from __future__ import annotations

from typing import Any

__all__ = ["install_from_bundle", "make_bundle", "verify_manifest", "xinference_offline_env"]


def __getattr__(name: str) -> Any:
    # Imported on use: `provision.bundle.verify_manifest` must not load the installer.
    if name == "make_bundle":
        from provision.bundle.make import make_bundle

        return make_bundle
    if name == "verify_manifest":
        from provision.bundle.manifest import verify_manifest

        return verify_manifest
    if name == "install_from_bundle":
        from provision.bundle.offline_install import install_from_bundle

        return install_from_bundle
    if name == "xinference_offline_env":
        from provision.bundle.xinference_env import xinference_offline_env

        return xinference_offline_env
    raise AttributeError(name)
