"""Hugging Face ids through huggingface_hub: the local cache first, then the hub.

huggingface_hub itself honours HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN and HF_HUB_CACHE; this
module only decides what to fetch (for a decision: config.json and the safetensors index,
never the weights) and turns its errors into one-line UserErrors.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from provision.errors import OperationFailed, UserError

# owner/name as the hub allows it (huggingface_hub.utils.validate_repo_id's rules, loosely).
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
INDEX = "model.safetensors.index.json"
# What a serving engine reads from a repository; other files (other weight formats, images,
# original/ checkpoints) are left on the hub.
SERVE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py"]


def looks_like_hf_id(model: str) -> bool:
    return bool(HF_ID.match(model)) and not model.startswith((".", "/", "~"))


@dataclass(frozen=True)
class HubModel:
    repo_id: str
    revision: str | None
    source: Literal["hf-cache", "hub"]
    config: dict[str, Any]
    weights_bytes: int | None
    snapshot: Path | None  # the cached snapshot directory, when the model is in the cache


def _quiet() -> None:
    """huggingface_hub warns on stderr about every retry; our errors say it in one line."""
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def _reachable(endpoint: str, timeout_s: float = 5.0) -> bool:
    """Whether the hub's host accepts a connection; huggingface_hub would retry for ~25 s."""
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _read_json(path: str | Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _hub_error(repo_id: str, revision: str | None, e: Exception) -> UserError:
    from huggingface_hub import errors

    rev = f" at revision {revision}" if revision else ""
    if isinstance(e, errors.GatedRepoError):
        return UserError(
            f"{repo_id} is gated on the Hugging Face hub: accept its license there and set HF_TOKEN"
        )
    if isinstance(e, errors.RevisionNotFoundError):
        return UserError(f"{repo_id} has no revision {revision} on the Hugging Face hub")
    if isinstance(e, errors.RepositoryNotFoundError):
        return UserError(
            f"no model {repo_id} on the Hugging Face hub (a private one needs HF_TOKEN); "
            "for an Xinference built-in name, drop the owner/"
        )
    from huggingface_hub import constants

    return UserError(
        f"{repo_id}{rev} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
        "the hub "
        f"({constants.ENDPOINT}) cannot be reached: {type(e).__name__}"
    )


def _cached_weights_bytes(snapshot: Path) -> int | None:
    index = snapshot / INDEX
    if index.is_file():
        total = _read_json(index).get("metadata", {}).get("total_size")
        if isinstance(total, int):
            return total
    files = list(snapshot.glob("*.safetensors"))
    return sum(f.stat().st_size for f in files) if files else None


def resolve_hub_model(repo_id: str, revision: str | None) -> HubModel:
    """The model's config and size, from the cache when it is there, else from the hub (the
    config and the index only). Bad ids and an unreachable hub with nothing cached: UserError."""
    from huggingface_hub import errors, hf_hub_download

    try:
        config_path = hf_hub_download(repo_id, "config.json", revision=revision, local_files_only=True)
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, FileNotFoundError):
        config_path = None
    except errors.HFValidationError as e:
        raise UserError(f"{repo_id}: not a valid Hugging Face id ({e})") from None
    _quiet()
    if config_path is not None:
        snapshot = Path(config_path).parent
        return HubModel(
            repo_id, revision, "hf-cache", _read_json(config_path), _cached_weights_bytes(snapshot), snapshot
        )
    if _offline():
        from huggingface_hub import constants

        raise UserError(
            f"{repo_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set"
        )
    from huggingface_hub import constants

    if not _reachable(constants.ENDPOINT):
        raise UserError(
            f"{repo_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the hub "
            f"({constants.ENDPOINT}) cannot be reached"
        )
    try:
        config_path = hf_hub_download(repo_id, "config.json", revision=revision)
    except errors.RemoteEntryNotFoundError:
        raise UserError(
            f"{repo_id} has no config.json: not a transformers model "
            "(for a GGUF repository, download the file and serve its path)"
        ) from None
    except Exception as e:  # noqa: BLE001 - every hub failure becomes one line
        raise _hub_error(repo_id, revision, e) from None
    return HubModel(
        repo_id, revision, "hub", _read_json(config_path), _hub_weights_bytes(repo_id, revision), None
    )


def _hub_weights_bytes(repo_id: str, revision: str | None) -> int | None:
    from huggingface_hub import HfApi, errors, hf_hub_download

    try:
        index = _read_json(hf_hub_download(repo_id, INDEX, revision=revision))
        total = index.get("metadata", {}).get("total_size")
        return total if isinstance(total, int) else None
    except errors.RemoteEntryNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001
        raise _hub_error(repo_id, revision, e) from None
    try:
        infos = HfApi().get_paths_info(repo_id, ["model.safetensors"], revision=revision)
    except Exception as e:  # noqa: BLE001
        raise _hub_error(repo_id, revision, e) from None
    sizes = [getattr(i, "size", None) for i in infos]
    return sum(s for s in sizes if isinstance(s, int)) or None


def download_snapshot(repo_id: str, revision: str | None, filename: str | None = None) -> Path:
    """The files a server needs, into the Hugging Face cache (resumable: an interrupted download
    leaves only huggingface_hub's own .incomplete blobs, which the next run resumes).
    Returns the snapshot directory, or with `filename` that one file's path."""
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if filename:
            return Path(hf_hub_download(repo_id, filename, revision=revision))
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=SERVE_PATTERNS))
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001
        if isinstance(e, OSError) and not type(e).__module__.startswith("huggingface_hub"):
            raise OperationFailed(f"downloading {repo_id}: {e}") from None
        raise _hub_error(repo_id, revision, e) from None
