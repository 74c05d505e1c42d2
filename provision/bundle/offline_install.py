"""`install --from-bundle DIR`: check the bundle, then install its plan with no index at all.

Order: the manifest is read BEFORE anything is created; the bundle must fit this machine (OS,
arch, glibc, Python); its listed paths must stay inside it and its folders hold nothing
unlisted and no symlink; then every listed file is linked (or copied) into a private folder and
hashed THERE, so the installer reads exactly the bytes that passed and nothing else (a
find-links directory would take any wheel in it). The llama-cpp-python sdist and any wheel
built for this machine are seeded into our cache, where the installer looks for them; then the
usual install runs with the checked wheels/ as the only source (uv --offline --no-index
--find-links, pip --no-index), every version held to the bundle's lock, and the usual verify
and receipt.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from provision.bundle.fetch import place
from provision.bundle.manifest import Manifest, Target, check_files, check_layout, read_manifest
from provision.errors import UserError
from provision.install import wheelhouse
from provision.install.executor import InstallerKind
from provision.install.pipconfig import IndexConfig
from provision.install.progress import Reporter
from provision.plan import plan_from_dict
from provision.profile import profile_from_dict

# Variables through which a user points uv or pip at an index: unset while installing offline.
_INDEX_VARS = (
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_INDEX",
    "UV_FIND_LINKS",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
)


def offline_variables(wheels: Path) -> dict[str, str]:
    """What uv and pip (ours and their build steps) get: no network, the bundle's wheels only."""
    return {
        "UV_OFFLINE": "1",
        "UV_NO_INDEX": "1",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheels),
        # pip.conf may name other find-links or mirrors; the bundle must be the only source.
        "PIP_CONFIG_FILE": os.devnull,
    }


@contextlib.contextmanager
def offline_environment(wheels: Path, environ=os.environ) -> Iterator[None]:
    saved = {k: environ.get(k) for k in (*_INDEX_VARS, *offline_variables(wheels))}
    try:
        for k in _INDEX_VARS:
            environ.pop(k, None)
        environ.update(offline_variables(wheels))
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                environ.pop(k, None)
            else:
                environ[k] = v


def _glibc_of(platform: str) -> tuple[int, int] | None:
    m = re.search(r"manylinux_(\d+)_(\d+)", platform)
    return (int(m.group(1)), int(m.group(2))) if m else None


def fit_problem(
    target: Target, system: str, arch: str, glibc: tuple[int, int] | None, python: str
) -> str | None:
    """Why a bundle made for `target` cannot install here, or None. Pure, so every case is tested."""
    arch = "aarch64" if arch in ("aarch64", "arm64") else arch
    here = f"{system} {arch}" + (f" glibc {glibc[0]}.{glibc[1]}" if glibc else "") + f", Python {python}"
    made = f"{target.platform}, Python {target.python}"
    if target.system != system or target.arch != arch:
        return f"the bundle is for another platform ({made}); this machine is {here}"
    need = _glibc_of(target.platform)
    if need and (glibc is None or glibc < need):
        return f"the bundle needs glibc {need[0]}.{need[1]} ({made}); this machine is {here}"
    if target.python != python:
        return f"the bundle is for another Python ({made}); this machine is {here}"
    return None


def check_fits_here(manifest: Manifest) -> None:
    from provision.probe.osinfo import os_info
    from provision.probe.system import System

    os_ = os_info(System.current()).value
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    problem = fit_problem(manifest.target, os_.system, os_.arch, os_.glibc_version, python)
    if problem:
        raise UserError(problem)


def seed_cache(root: Path, manifest: Manifest, cache: Path) -> None:
    """Put the bundle's sdists of source builds and its built wheels where the installer looks."""
    for f in manifest.files:
        src = root / f.path
        if f.role == "sdist" and src.name.startswith(f"{wheelhouse.SDIST_STEM}-"):
            place(src, cache / "sdist" / src.name)
            # The manifest's hash was checked a moment ago; the installer checks reuses against it.
            (cache / "sdist" / (src.name + ".sha256")).write_text(f.sha256 + "\n")
        elif f.role == "built":
            place(src, cache / Path(f.path))  # wheelhouse/<key>/<file>


@contextlib.contextmanager
def checked_copy(root: Path, manifest: Manifest, under: Path) -> Iterator[Path]:
    """A private folder holding the listed files only, each hashed there. Hard links where the
    bundle shares a file system with `under` (free), copies elsewhere (a read-only stick)."""
    under.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix="bundle-checked-", dir=under))
    try:
        for f in manifest.files:
            src, out = root / f.path, dest / f.path
            out.parent.mkdir(parents=True, exist_ok=True)
            if src.is_file():
                try:
                    os.link(src, out)
                except OSError:
                    shutil.copyfile(src, out)
        check_files(dest, manifest)  # a missing file is missing here too, and named the same
        yield dest
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def pins_by_env(manifest: Manifest) -> dict[str, list[str]]:
    """Exact versions from the bundle's locks, held as constraints (sources built here excluded)."""
    built = {b["name"] for b in manifest.plan.get("backends", []) if b.get("build")}
    return {
        name: [p for p in env.get("pins", []) if p.split("==")[0] not in built]
        for name, env in manifest.environments.items()
    }


def install_from_bundle(
    bundle_dir: str | Path,
    venv_root: Path | None = None,
    installer: InstallerKind = "uv",
    reporter: Reporter | None = None,
    wait: bool = True,
):
    """Verify the bundle, then install its plan from it with no network. Returns the receipt."""
    from provision.install.envs import locate
    from provision.install.receipt import write_receipt
    from provision.install.run import InstallOptions, install_plan
    from provision.plan import PRIMARY_ENV

    root = Path(bundle_dir).expanduser().absolute()
    reporter = reporter or Reporter()
    manifest = read_manifest(root)
    check_fits_here(manifest)  # before hashing hundreds of MB for a bundle that cannot install here
    check_layout(root, manifest)
    plan = plan_from_dict(manifest.plan)
    cache = wheelhouse.cache_root()
    with checked_copy(root, manifest, cache / "tmp") as checked:
        reporter.say(f"bundle {root}: {len(manifest.files)} files match {root.name}/MANIFEST.json")
        wheels = checked / "wheels"
        seed_cache(checked, manifest, cache)
        index = IndexConfig(no_index=True, find_links=(str(wheels),))
        options = InstallOptions(
            index=index,
            replay_pins=pins_by_env(manifest),
            offline=True,
            wait=wait,
            # Wheels built on another host for this one: keyed by that host's libc and compiler.
            builder=profile_from_dict(manifest.built_on) if manifest.built_on else None,
        )
        with offline_environment(wheels):
            receipt = install_plan(plan, venv_root, installer, options=options, reporter=reporter)
    receipt.notes.append(
        f"installed offline from the bundle {root} (made by xinfer-setup {manifest.tool_version})"
    )
    locations = locate(plan, venv_root)
    write_receipt(receipt, (locations.get(PRIMARY_ENV) or next(iter(locations.values()))).prefix)
    return receipt
