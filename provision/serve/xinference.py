"""Serve through a local Xinference (4.1.0): start xinference-local, register the model as a
custom LLM from its local path, launch it with the chosen engine, drive it all over REST.

Facts of Xinference 4.1.0 this relies on (read in its source, seen running here):
- auth is on by default: the first run creates a setup token (kept in <XINFERENCE_HOME>/auth/
  auth.db, table system_config) and wants POST /v1/admin/setup; XINFERENCE_AUTH_ADVANCED=0
  turns auth off. With auth on, POST /token gives a bearer token and POST /v1/admin/keys an
  API key (Xinference makes the key; a caller cannot choose it).
- per-model virtualenvs are on by default and install engine packages from the internet at
  launch; with XINFERENCE_VIRTUAL_ENV_SKIP_INSTALLED=1 what the parent environment has is
  skipped, and UV_OFFLINE/UV_FIND_LINKS keep any install to our own wheels.
- a custom LLM is registered with POST /v1/model_registrations/LLM {"model": <family JSON>,
  "persist": false}; model_uri must be an absolute path; a GGUF is format "ggufv2" with
  model_uri = its directory and model_file_name_template = its file name.
- POST /v1/models rejects an LLM launch without model_engine (Transformers, vLLM, SGLang, llama.cpp).
- the llama.cpp engine drives xllamacpp, not llama-cpp-python.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import stat
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.engines.server import ManagedServer
from provision.errors import OperationFailed
from provision.serve.choice import XINFERENCE_ENGINE_NAMES
from provision.serve.model_facts import ModelFacts

# Xinference matches a launch against the registered spec by this label; it sizes nothing.
MODEL_SIZE_LABEL = 1
ADMIN_USER = "xinfer-setup"
LAUNCH_TIMEOUT_S = 600


def xinference_command(python: Path, host: str, port: int) -> list[str]:
    """xinference-local of the environment Xinference was installed into (its console script
    sits beside that environment's python)."""
    return [str(Path(python).parent / "xinference-local"), "-H", host, "-p", str(port)]


def provisioned_find_links(environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Wheel directories install left behind (the llama-cpp-python wheelhouse), for a model
    virtualenv that lacks a package: uv installs from them, never from an index."""
    from provision import paths

    return sorted({w.parent for w in (paths.cache_dir(environ) / "wheelhouse").glob("*/*.whl")})


def xinference_env(
    home: Path, auth: bool, python: Path | None = None, find_links: list[Path] | None = None
) -> dict[str, str]:
    """Xinference's own per-model virtualenvs, kept offline: each model's venv is layered over
    this environment (--system-site-packages plus Xinference's parent .pth), packages the
    environment already has are skipped, and uv may install only from our wheel directories."""
    links = [str(p) for p in (find_links or [])]
    env = {
        "XINFERENCE_HOME": str(home),
        "XINFERENCE_ENABLE_VIRTUAL_ENV": "1",
        "XINFERENCE_VIRTUAL_ENV_SKIP_INSTALLED": "1",
        "XINFERENCE_DISABLE_METRICS": "1",
        # uv never reaches an index: a missing wheel fails in under a second instead of ~20 s of
        # DNS retries (../shared/notes/xinference-virtualenv-offline.md).
        "UV_OFFLINE": "1",
    }
    if links:
        env["UV_FIND_LINKS"] = ",".join(links)
        env["XINFERENCE_VIRTUAL_ENV_FIND_LINKS_ALLOWED_ROOTS"] = ",".join(links)
    if python is not None:
        # Xinference runs `uv` from PATH; the one installed beside it is the one it was tested with.
        env["PATH"] = f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if not auth:
        env["XINFERENCE_AUTH_ADVANCED"] = "0"
    return env


def custom_llm_family(facts: ModelFacts, model_name: str, family: str | None) -> dict[str, Any]:
    """The custom-model JSON that registers a local model (Xinference's LLMFamilyV2)."""
    if facts.kind == "gguf":
        spec: dict[str, Any] = {
            "model_format": "ggufv2",
            "model_size_in_billions": MODEL_SIZE_LABEL,
            "quantization": facts.quantization,
            "model_uri": str(facts.path.parent),
            "model_file_name_template": facts.path.name,
            "model_id": None,
        }
    else:
        spec = {
            "model_format": facts.format,
            "model_size_in_billions": MODEL_SIZE_LABEL,
            "quantization": facts.quantization,
            "model_uri": str(facts.path),
            "model_id": None,
        }
    family_json: dict[str, Any] = {
        "version": 2,
        "model_name": model_name,
        "model_lang": ["en"],
        # Without "chat" Xinference serves only completions; the model's own template makes it chat.
        "model_ability": ["generate", "chat"] if facts.chat_template else ["generate"],
        "model_description": f"{facts.path} registered by xinfer-setup serve",
        # Xinference wants a family; its own names only matter for built-in prompt styles.
        "model_family": family or facts.model_type or "custom",
        "model_specs": [spec],
        "chat_template": facts.chat_template,
        "stop_token_ids": [],
        "stop": [],
    }
    if facts.architectures:
        family_json["architectures"] = list(facts.architectures)
    if facts.context_length:
        family_json["context_length"] = facts.context_length
    return family_json


def launch_payload(model_name: str, engine: str, facts: ModelFacts) -> dict[str, Any]:
    return {
        "model_uid": model_name,
        "model_name": model_name,
        "model_type": "LLM",
        "model_engine": XINFERENCE_ENGINE_NAMES[engine],
        "model_format": "ggufv2" if facts.kind == "gguf" else facts.format,
        "model_size_in_billions": MODEL_SIZE_LABEL,
        "quantization": facts.quantization,
    }


def read_setup_token(home: Path) -> str | None:
    """The first-run setup token Xinference keeps in its auth database."""
    db = home / "auth" / "auth.db"
    if not db.exists():
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM system_config WHERE key = 'setup_token'").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return row[0] if row else None


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Created 0600 from the first byte: credentials are never readable by others, not even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)


class XinferenceServer(ManagedServer):
    """xinference-local as a managed server; with auth on, a 401 on /v1/models means it is up."""

    def _probe_models(self) -> list[str] | None:
        request = urllib.request.Request(self.base_url + "/models")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
        except urllib.error.HTTPError as e:
            return [] if e.code in (401, 403) else None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return None
        return []


@dataclass
class XinferenceApi:
    """The few REST calls serve makes, with a bearer token once auth is set up."""

    root: str  # http://host:port
    token: str | None = None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.root + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("detail", detail)
            raise OperationFailed(f"Xinference {method} {path}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise OperationFailed(f"Xinference {method} {path}: {e}") from None
        return json.loads(raw) if raw else None

    def setup_admin_and_key(self, home: Path, credentials_path: Path) -> str:
        """Complete the first-run admin setup, log in, make an API key; keep all three in a
        file only the user can read. Returns the API key."""
        setup_token = read_setup_token(home)
        if setup_token is None:
            raise OperationFailed(f"Xinference wants admin setup but {home}/auth/auth.db has no setup token")
        password = secrets.token_urlsafe(24)
        self.call(
            "POST",
            "/v1/admin/setup",
            {"setup_token": setup_token, "username": ADMIN_USER, "password": password},
        )
        login = self.call("POST", "/token", {"username": ADMIN_USER, "password": password})
        self.token = login["access_token"]
        key = self.call("POST", "/v1/admin/keys", {"name": "xinfer-setup-serve"})["key"]
        write_private_json(
            credentials_path, {"url": self.root, "username": ADMIN_USER, "password": password, "api_key": key}
        )
        # The admin's bearer token stays: API keys may only query models and run inference.
        return key

    def register_and_launch(self, facts: ModelFacts, model_name: str, engine: str, family: str | None) -> str:
        """Register the model, launch it; returns the model uid OpenAI clients name."""
        family_json = custom_llm_family(facts, model_name, family)
        self.call("POST", "/v1/model_registrations/LLM", {"model": json.dumps(family_json), "persist": False})
        result = self.call(
            "POST", "/v1/models", launch_payload(model_name, engine, facts), timeout=LAUNCH_TIMEOUT_S
        )
        return result["model_uid"]
