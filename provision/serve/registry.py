"""Xinference built-in model names, read from the registry inside the installed Xinference
(xinference/model/llm/models/*.json: formats, sizes, quantizations, hub ids and
model_metadata). Nothing of it is copied into this repository.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.errors import UserError

REGISTRY_SUBDIR = Path("xinference") / "model" / "llm" / "models"
# Formats an engine serve drives can load; mlx and the rest are left out of the choice.
SERVABLE_FORMATS = ("pytorch", "fp8", "gptq", "awq", "bnb", "ggufv2")
EIGHT_BIT = ("int8", "fp8", "8-bit", "8bit")
FOUR_BIT = ("int4", "4-bit", "4bit", "nf4")


def registry_dir(env_prefix: Path) -> Path | None:
    """The registry directory of the Xinference installed in this environment, found on disk
    (importing xinference takes seconds)."""
    for pattern in ("lib/python3*/site-packages", "Lib/site-packages"):
        for site in sorted(Path(env_prefix).glob(pattern)):
            d = site / REGISTRY_SUBDIR
            if d.is_dir():
                return d
    return None


def _families(models_dir: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(models_dir.glob("*.json")):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for fam in data if isinstance(data, list) else [data]:
            if isinstance(fam, dict) and isinstance(fam.get("model_name"), str):
                out.setdefault(fam["model_name"], fam)
    return out


@dataclass(frozen=True)
class RegistrySpec:
    model_name: str
    model_format: str
    size: str  # as the registry writes it: 7, 1_5, 46_7
    quantization: str
    hub_id: str | None  # its Hugging Face model_id
    file_name: str | None  # a GGUF spec: the file in that repository
    metadata: dict[str, Any]
    family: dict[str, Any]

    @property
    def params(self) -> float:
        return float(self.size.replace("_", ".")) * 1e9

    @property
    def size_label(self) -> str:
        return self.size.replace("_", ".")

    def rank(self, bits: float | None) -> tuple[int, float]:
        """Preference: unquantized, then 8-bit, then 4-bit, then GGUF (more bits first)."""
        q = self.quantization.lower()
        if self.model_format == "ggufv2":
            return 4, -(bits or 0)
        if self.model_format == "pytorch" and q == "none":
            return 0, 0
        if q in EIGHT_BIT:
            return 1, 0
        if q in FOUR_BIT:
            return 2, 0
        return 3, -(bits or 0)


def _specs(name: str, fam: dict[str, Any]) -> list[RegistrySpec]:
    base = {k: v for k, v in fam.items() if k != "model_specs"}
    out = []
    # Specs of one size share the model's shape; some (GPTQ) state no model_metadata of their own.
    shapes: dict[str, dict[str, Any]] = {}
    for spec in fam.get("model_specs", []):
        for s in (spec.get("model_src") or {}).values():
            if s.get("model_metadata"):
                shapes.setdefault(str(spec.get("model_size_in_billions")), s["model_metadata"])
    for spec in fam.get("model_specs", []):
        fmt = spec.get("model_format")
        srcs = spec.get("model_src") or {}
        hf = srcs.get("huggingface") or {}
        quants = hf.get("quantizations") or next((s.get("quantizations") for s in srcs.values()), None) or []
        # model_metadata sits beside one or more hubs' ids; the shape is the same model's.
        meta = next(
            (s["model_metadata"] for s in [hf, *srcs.values()] if s.get("model_metadata")),
            shapes.get(str(spec.get("model_size_in_billions")), {}),
        )
        template = hf.get("model_file_name_template")
        for q in quants:
            out.append(
                RegistrySpec(
                    model_name=name,
                    model_format=fmt,
                    size=str(spec.get("model_size_in_billions")),
                    quantization=q,
                    # GPTQ ids name the quantization: "Qwen/Qwen2.5-7B-Instruct-GPTQ-{quantization}".
                    hub_id=hf["model_id"].replace("{quantization}", q) if hf.get("model_id") else None,
                    file_name=template.format(quantization=q)
                    if fmt == "ggufv2" and template and not hf.get("model_file_name_split_template")
                    else None,
                    metadata=meta,
                    family=base,
                )
            )
    return out


def _same_size(a: str, b: str) -> bool:
    try:
        return float(a.replace("_", ".")) == float(b.replace("_", "."))
    except ValueError:
        return a == b


def built_in_specs(
    models_dir: Path, name: str, size: str | None, model_format: str | None, quantization: str | None
) -> list[RegistrySpec]:
    """The specs of a built-in name that match the options, servable formats only. Unknown
    names, sizes, formats and quantizations are UserErrors listing what the registry has."""
    families = _families(models_dir)
    fam = families.get(name) or next((f for n, f in families.items() if n.lower() == name.lower()), None)
    if fam is None:
        close = difflib.get_close_matches(name, list(families), n=5, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise UserError(
            f"{name}: not a local path, not a Hugging Face id (owner/name), and not an "
            "Xinference "
            f"built-in model name{hint}"
        )
    name = fam["model_name"]
    specs = [s for s in _specs(name, fam) if s.model_format in SERVABLE_FORMATS]
    if not specs:
        raise UserError(
            f"{name}: Xinference has no spec of it in a format serve can run ({', '.join(SERVABLE_FORMATS)})"
        )
    sizes = list(dict.fromkeys(s.size_label for s in specs))
    if size is not None:
        specs = [s for s in specs if _same_size(s.size, size)]
        if not specs:
            raise UserError(f"{name} has no size {size} (sizes in billions: {', '.join(sizes)})")
    elif len(sizes) > 1:
        raise UserError(f"{name} comes in several sizes: pass --size ({', '.join(sizes)})")
    if model_format is not None:
        formats = list(dict.fromkeys(s.model_format for s in specs))
        specs = [s for s in specs if s.model_format == model_format]
        if not specs:
            raise UserError(
                f"{name} {sizes[0] if size is None else size}B has no format {model_format} "
                f"(formats: {', '.join(formats)})"
            )
    if quantization is not None:
        quants = list(dict.fromkeys(s.quantization for s in specs))
        specs = [s for s in specs if s.quantization.lower() == quantization.lower()]
        if not specs:
            raise UserError(
                f"{name} has no quantization {quantization} for these options "
                f"(quantizations: {', '.join(quants)})"
            )
    return specs
