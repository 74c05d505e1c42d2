"""What MODEL names: a local directory or GGUF, a Hugging Face id, or an Xinference built-in
name. Each becomes one or more Candidates (a built-in name: every spec that matches the
options, best first) carrying what engine choice and the memory fit read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from provision.errors import NotInstalled, UserError
from provision.serve import hub
from provision.serve.fit import FitFacts, ModelShape, shape_from_config, shape_from_gguf, shape_from_registry
from provision.serve.model_facts import ModelFacts, facts_from_config, inspect_model
from provision.serve.registry import RegistrySpec, built_in_specs

Source = Literal["local", "hf-cache", "hub", "xinference-registry"]


@dataclass(frozen=True)
class SourceOptions:
    revision: str | None = None
    size: str | None = None
    model_format: str | None = None
    quantization: str | None = None


@dataclass(frozen=True)
class Candidate:
    facts: ModelFacts
    source: Source
    served_name: str
    shape: ModelShape | None
    weights_bytes: int | None  # as stored (checkpoint dtype / quantization)
    hub_id: str | None = None
    revision: str | None = None
    hub_file: str | None = None  # a GGUF spec's file in its hub repository
    spec: RegistrySpec | None = None

    @property
    def on_disk(self) -> bool:
        return self.facts.path.exists()

    @property
    def display(self) -> str:
        return str(self.facts.path) if self.on_disk else (self.hub_id or str(self.facts.path))


def gguf_tensor_bytes(path: Path) -> tuple[dict[str, Any], int]:
    """(metadata, bytes of all tensors) of a GGUF file, read by the gguf package's reader."""
    from gguf import GGUFReader

    from provision.serve.model_facts import read_gguf_metadata

    meta = read_gguf_metadata(path)
    return meta, sum(int(t.n_bytes) for t in GGUFReader(path).tensors)


def _local_weights(path: Path) -> int | None:
    index = path / hub.INDEX
    if index.is_file():
        total = json.loads(index.read_text(encoding="utf-8")).get("metadata", {}).get("total_size")
        if isinstance(total, int):
            return total
    files = list(path.glob("*.safetensors")) or list(path.glob("pytorch_model*.bin"))
    return sum(f.stat().st_size for f in files) if files else None


def local_candidate(path: Path) -> Candidate:
    facts = inspect_model(path)
    if facts.kind == "gguf":
        meta, tensors = gguf_tensor_bytes(facts.path)
        return Candidate(facts, "local", facts.name, shape_from_gguf(meta), tensors)
    config = json.loads((facts.path / "config.json").read_text(encoding="utf-8"))
    return Candidate(facts, "local", facts.name, shape_from_config(config), _local_weights(facts.path))


def hub_candidate(repo_id: str, revision: str | None) -> Candidate:
    m = hub.resolve_hub_model(repo_id, revision)
    where = m.snapshot or Path(repo_id)
    facts = facts_from_config(where, m.config)
    return Candidate(
        facts,
        m.source,
        repo_id,
        shape_from_config(m.config),
        m.weights_bytes,
        hub_id=repo_id,
        revision=revision,
    )


def registry_candidate(spec: RegistrySpec, facts_recipe: FitFacts) -> Candidate:
    fam = spec.family
    ctx = fam.get("context_length") if isinstance(fam.get("context_length"), int) else None
    shape = shape_from_registry(spec.metadata, ctx) if spec.metadata else None
    template = fam.get("chat_template") if isinstance(fam.get("chat_template"), str) else None
    where = Path(spec.hub_id or spec.model_name)
    arches = tuple(fam.get("architectures") or ())
    gguf = spec.model_format == "ggufv2"  # one file; every other format is a directory
    facts = ModelFacts(
        path=where / (spec.file_name or "model.gguf") if gguf else where,
        kind="gguf" if gguf else "hf",
        format=spec.model_format,
        quantization=spec.quantization,
        architectures=arches,
        model_type=fam.get("model_type"),
        vocab_size=spec.metadata.get("vocab_size"),
        context_length=ctx,
        chat_template=template,
    )
    from provision.serve.fit import weights_for_params

    weights = weights_for_params(spec.params, spec.quantization, facts_recipe)
    return Candidate(
        facts,
        "xinference-registry",
        spec.model_name,
        shape,
        weights,
        hub_id=spec.hub_id,
        hub_file=spec.file_name,
        spec=spec,
    )


def resolve_model(
    model: str, opts: SourceOptions, registry: Callable[[], Path | None], facts_recipe: FitFacts
) -> list[Candidate]:
    """The candidates MODEL names, best first. `registry` finds the installed Xinference's
    registry directory (called only for a built-in name)."""
    path = Path(model).expanduser()
    if path.exists():
        for flag, value in (
            ("--size", opts.size),
            ("--format", opts.model_format),
            ("--quantization", opts.quantization),
            ("--revision", opts.revision),
        ):
            if value is not None:
                raise UserError(
                    f"{flag} applies to Xinference built-in names and Hugging Face ids, "
                    f"not to a local model ({path})"
                )
        return [local_candidate(path)]
    if model.startswith((".", "/", "~")) or model.endswith(".gguf") or "\\" in model:
        raise UserError(f"no such model: {path}")
    if hub.looks_like_hf_id(model):
        for flag, value in (
            ("--size", opts.size),
            ("--format", opts.model_format),
            ("--quantization", opts.quantization),
        ):
            if value is not None:
                raise UserError(f"{flag} applies to Xinference built-in names; {model} is a Hugging Face id")
        return [hub_candidate(model, opts.revision)]
    if opts.revision is not None:
        raise UserError("--revision applies to Hugging Face ids (owner/name)")
    models_dir = registry()
    if models_dir is None:
        raise NotInstalled(
            f"{model}: not a local path or a Hugging Face id, and no installed Xinference to "
            "look up built-in names in: run `xinfer-setup install --backend xinference`"
        )
    specs = built_in_specs(models_dir, model, opts.size, opts.model_format, opts.quantization)
    cands = [registry_candidate(s, facts_recipe) for s in specs]
    return sorted(
        cands, key=lambda c: c.spec.rank(facts_recipe.bits(c.spec.quantization)) if c.spec else (9, 0)
    )


def with_local_path(cand: Candidate, path: Path) -> Candidate:
    """The candidate once its files are on disk (after a download)."""
    if cand.facts.kind == "gguf":
        return replace(
            local_candidate(path),
            source=cand.source,
            served_name=cand.served_name,
            hub_id=cand.hub_id,
            spec=cand.spec,
        )
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    facts = facts_from_config(path, config, None, _chat_template(path) or cand.facts.chat_template)
    return replace(cand, facts=facts, weights_bytes=_local_weights(path) or cand.weights_bytes)


def _chat_template(path: Path) -> str | None:
    from provision.serve.model_facts import _chat_template_of

    return _chat_template_of(path)
