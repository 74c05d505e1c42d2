"""What a model is, read from the model itself: its format, quantization and architecture.

A Hugging Face directory is described by its config.json (`architectures`, `model_type`,
`vocab_size`, `quantization_config`); a GGUF file by its metadata (`general.architecture`,
`general.file_type`, `<arch>.vocab_size`). The names Xinference uses for formats
(pytorch, awq, gptq, fp8, bnb, ggufv2) and quantizations (none, Int4, Q4_K_M) are kept,
so the engine rules read like Xinference's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.engines.adapters import ModelFormat
from provision.errors import UserError

GGUF_MAGIC = b"GGUF"

# quantization_config.quant_method -> Xinference's model_format.
QUANT_METHOD_FORMATS = {"awq": "awq", "gptq": "gptq", "fp8": "fp8", "bitsandbytes": "bnb"}


@dataclass(frozen=True)
class ModelFacts:
    path: Path
    kind: ModelFormat  # "hf" (a Hugging Face directory) or "gguf" (one file)
    format: str  # pytorch, awq, gptq, fp8, bnb, ggufv2, or the checkpoint's own quant_method
    quantization: str  # none, Int4, FP8, Q4_K_M, F32 ...
    architectures: tuple[str, ...]
    model_type: str | None
    vocab_size: int | None = None
    context_length: int | None = None
    chat_template: str | None = None

    @property
    def name(self) -> str:
        """The name to serve it under: the directory's name, or the file's stem."""
        return self.path.stem if self.kind == "gguf" else self.path.name


def quantization_of(qc: dict[str, Any] | None) -> tuple[str, str]:
    """(format, quantization) from config.json's quantization_config.

    Real samples:
      AWQ  {"quant_method": "awq", "zero_point": true, "group_size": 128, "bits": 4, "version": "gemm"}
      GPTQ {"bits": 4, "group_size": 128, "desc_act": false, "sym": true, "quant_method": "gptq"}
      FP8  {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
            "weight_block_size": [128, 128]}
      bnb  {"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "nf4"}
    """
    if not qc:
        return "pytorch", "none"
    method = str(qc.get("quant_method", "")).lower()
    fmt = QUANT_METHOD_FORMATS.get(method, method or "unknown")
    if fmt == "fp8":
        return fmt, "FP8"
    if fmt == "bnb":
        return fmt, "Int4" if qc.get("load_in_4bit") else "Int8" if qc.get("load_in_8bit") else "unknown"
    bits = qc.get("bits", qc.get("w_bit"))
    return fmt, f"Int{bits}" if isinstance(bits, int) else "unknown"


def facts_from_config(
    path: Path,
    config: dict[str, Any],
    quantize_config: dict[str, Any] | None = None,
    chat_template: str | None = None,
) -> ModelFacts:
    """Facts of a Hugging Face directory from its parsed config.json.

    Older AutoGPTQ checkpoints keep their quantization in quantize_config.json
    ({"bits": 4, "group_size": 128, "desc_act": false}) instead of config.json.
    """
    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    if not isinstance(architectures, list) or not (architectures or model_type):
        raise UserError(f"{path}: config.json names no architectures or model_type; is this a model?")
    qc = config.get("quantization_config")
    if not qc and quantize_config:
        qc = {"quant_method": "gptq", **quantize_config}
    fmt, quant = quantization_of(qc)
    found = config.get("text_config")
    text: dict[str, Any] = found if isinstance(found, dict) else {}
    vocab = config.get("vocab_size", text.get("vocab_size"))
    ctx = config.get("max_position_embeddings", text.get("max_position_embeddings"))
    return ModelFacts(
        path=path,
        kind="hf",
        format=fmt,
        quantization=quant,
        architectures=tuple(str(a) for a in architectures),
        model_type=str(model_type) if model_type else None,
        vocab_size=vocab if isinstance(vocab, int) else None,
        context_length=ctx if isinstance(ctx, int) else None,
        chat_template=chat_template,
    )


def gguf_quantization(file_type: int | None) -> str:
    """general.file_type (llama.cpp's LlamaFileType) as a quantization name: 15 -> Q4_K_M, 0 -> F32."""
    if file_type is None:
        return "unknown"
    from gguf import LlamaFileType

    try:
        name = LlamaFileType(file_type).name
    except ValueError:
        return f"file_type {file_type}"
    return "F32" if name == "ALL_F32" else name.removeprefix("MOSTLY_")


def facts_from_gguf_metadata(path: Path, meta: dict[str, Any]) -> ModelFacts:
    """Facts of a GGUF file from its metadata key/values, as the gguf reader gives them:

    general.architecture = "llama", general.file_type = 0, llama.vocab_size = 431,
    llama.context_length = 2048, tokenizer.chat_template = "{% for message in messages %}..."
    """
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise UserError(f"{path}: GGUF without general.architecture; is this a model?")
    vocab = meta.get(f"{arch}.vocab_size")
    if vocab is None and isinstance(meta.get("tokenizer.ggml.tokens"), list):
        vocab = len(meta["tokenizer.ggml.tokens"])
    return ModelFacts(
        path=path,
        kind="gguf",
        format="ggufv2",
        quantization=gguf_quantization(meta.get("general.file_type")),
        architectures=(),
        model_type=arch,
        vocab_size=int(vocab) if vocab is not None else None,
        context_length=meta.get(f"{arch}.context_length"),
        chat_template=meta.get("tokenizer.chat_template"),
    )


# ---------------------------------------------------------------- reading files


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """Key/values of a GGUF file, scalars and strings decoded; token lists are skipped
    except for their length, which is all a vocabulary size needs."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable GGUF file ({e})") from None
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key == "tokenizer.ggml.tokens":
            meta[key] = [None] * len(field.data)
        elif key.startswith("tokenizer.ggml.") and len(field.data) > 1:
            continue
        else:
            meta[key] = field.contents()
    return meta


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _chat_template_of(model_dir: Path) -> str | None:
    """transformers 5 writes chat_template.jinja; older checkpoints keep it in tokenizer_config.json."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tc = model_dir / "tokenizer_config.json"
    if tc.is_file():
        template = _read_json(tc).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def inspect_model(path: Path) -> ModelFacts:
    """Facts of a local model: a Hugging Face directory or a GGUF file. Bad input is a UserError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"no such model: {path}")
    path = path.resolve()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise UserError(f"{path} is not a model directory: it has no config.json")
        qc_file = path / "quantize_config.json"
        quantize_config = _read_json(qc_file) if qc_file.is_file() else None
        return facts_from_config(path, _read_json(config), quantize_config, _chat_template_of(path))
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise UserError(f"{path} is neither a model directory nor a GGUF file")
    return facts_from_gguf_metadata(path, read_gguf_metadata(path))
