"""Which engine serves a model here: Xinference's rules, as a pure function.

Order (Xinference's installation guide, "vLLM Backend", and its 4.1.0 match rules):
  1. vLLM when the format/quantization pair is one it takes (pytorch+none, awq+Int4,
     gptq+Int3/4/8), the system is Linux with a CUDA device, and the family is in its list;
  2. SGLang on the same terms with its own list;
  3. a GGUF file -> llama.cpp: xllamacpp (what Xinference 4.1.0 drives), else llama-cpp-python;
  4. everything else -> transformers.
An engine the rules pick but that is not installed is passed over, and the reason says so.
An explicit --engine is checked against the same rules and fails with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from provision.backends import registry
from provision.errors import NotInstalled, UserError
from provision.profile import HostProfile
from provision.serve.model_facts import ModelFacts
from provision.serve.rules import FamilyRule, GpuEngineRule, ServeRules

LLAMA_CPP_ENGINES = ("xllamacpp", "llama-cpp-python")
# What --engine accepts: every backend that serves models (it has an adapter), and "llama.cpp"
# for whichever llama.cpp binding is installed.
ENGINE_ALIASES = {
    **{b.name: (b.name,) for b in registry() if b.adapter},
    "llama.cpp": LLAMA_CPP_ENGINES,
}
# Plan backend name -> the model_engine Xinference's launch API takes (the registry's).
XINFERENCE_ENGINE_NAMES = {b.name: b.xinference_engine for b in registry() if b.xinference_engine}


@dataclass(frozen=True)
class EngineChoice:
    engine: str  # a plan backend name
    model: ModelFacts  # the form of the model it serves (tiny has an HF and a GGUF form)
    family: str | None
    reason: str


def family_of(facts: ModelFacts, rules: ServeRules) -> FamilyRule | None:
    for fam in rules.families:
        named = bool(set(facts.architectures) & set(fam.architectures)) or (
            facts.model_type is not None and facts.model_type in fam.model_types
        )
        if named and (not fam.vocab_sizes or facts.vocab_size in fam.vocab_sizes):
            return fam
    return None


def gpu_engine_fit(
    rule: GpuEngineRule, facts: ModelFacts, family: FamilyRule | None, profile: HostProfile
) -> tuple[bool, str]:
    """Whether a GPU engine (vLLM, SGLang) may serve this model on this machine, and why (not)."""
    accepted = rule.formats.get(facts.format)
    if accepted is None:
        return False, f"{rule.name} takes {'/'.join(rule.formats)} models, this one is {facts.format}"
    if facts.quantization not in accepted:
        return False, (
            f"{rule.name} takes {facts.format} models quantized {'/'.join(accepted)}, "
            f"this one is {facts.quantization}"
        )
    if profile.os.system not in rule.systems:
        return False, f"{rule.name} runs on {'/'.join(rule.systems)} only, this is {profile.os.system}"
    if rule.needs_cuda and not (profile.nvidia_gpus and profile.nvidia is not None):
        return False, f"{rule.name} needs a CUDA device, there is none here"
    if family is None:
        arch = ", ".join(facts.architectures) or facts.model_type
        return False, f"{rule.name}: model family unknown ({arch}), not in its supported list"
    if rule.name not in family.engines:
        return False, f"{rule.name}: family {family.name} is not in its supported list"
    return True, (
        f"{rule.name}: {facts.format} {facts.quantization}, family {family.name}, "
        f"{profile.os.system} with {len(profile.nvidia_gpus)} CUDA device(s)"
    )


def _install_hint(engines: Sequence[str], hint_args: str) -> str:
    return f"run `xinfer-setup install --backend {engines[0]}{hint_args}`"


def _fit(
    engine: str, facts: ModelFacts, family: FamilyRule | None, profile: HostProfile, rules: ServeRules
) -> tuple[bool, str]:
    gpu_rule = next((r for r in rules.gpu_engines if r.name == engine), None)
    if gpu_rule is not None:
        if facts.kind != "hf":
            return False, f"{engine} serves Hugging Face directories, {facts.path.name} is a GGUF file"
        return gpu_engine_fit(gpu_rule, facts, family, profile)
    if engine in LLAMA_CPP_ENGINES:
        if facts.kind != "gguf":
            return False, f"{engine} serves GGUF files, {facts.path} is a Hugging Face directory"
        return True, f"{engine}: a GGUF model ({facts.quantization}) is served by llama.cpp"
    if engine == "transformers":
        if facts.kind != "hf":
            return False, f"transformers serves Hugging Face directories, {facts.path.name} is a GGUF file"
        return True, f"transformers: the default for a {facts.format} model no faster engine takes here"
    return False, f"unknown engine {engine}"


ELSEWHERE = (
    "{why}, but it lives in its own environment, which Xinference's server cannot load "
    "(serve it without --via)"
)


def _choose_for_form(
    facts: ModelFacts,
    profile: HostProfile,
    installed: frozenset[str],
    rules: ServeRules,
    elsewhere: frozenset[str] = frozenset(),
) -> tuple[EngineChoice | None, list[str]]:
    """The best installed engine for one form of the model, and the notes on engines passed over."""
    family = family_of(facts, rules)
    fam_name = family.name if family else None
    notes: list[str] = []
    if facts.kind == "gguf":
        for engine in LLAMA_CPP_ENGINES:
            if engine in installed:
                reason = _fit(engine, facts, family, profile, rules)[1]
                return EngineChoice(engine, facts, fam_name, reason), notes
        notes.append("a GGUF model needs llama.cpp (xllamacpp or llama-cpp-python), neither is installed")
        return None, notes
    for rule in rules.gpu_engines:
        ok, why = gpu_engine_fit(rule, facts, family, profile)
        if ok and rule.name in installed:
            return EngineChoice(rule.name, facts, fam_name, why), notes
        if ok and rule.name in elsewhere:
            notes.append(ELSEWHERE.format(why=why))
        else:
            notes.append(f"{why}, but it is not installed" if ok else why)
    if "transformers" in installed:
        reason = _fit("transformers", facts, family, profile, rules)[1]
        return EngineChoice("transformers", facts, fam_name, "; ".join([reason, *notes])), notes
    notes.append("transformers is not installed")
    return None, notes


def choose_engine(
    forms: Sequence[ModelFacts],
    profile: HostProfile,
    installed: frozenset[str],
    rules: ServeRules,
    requested: str | None = None,
    hint_args: str = "",
    elsewhere: frozenset[str] = frozenset(),
) -> EngineChoice:
    """The engine to serve the model with. `forms`: the model's forms in order of preference
    (one for a user's model; the tiny model has an HF directory and a GGUF). Raises UserError
    with the reason when no installed engine can serve it, or the requested one cannot.
    `elsewhere`: engines installed, but where the caller (Xinference) cannot load them; they
    get no install hint, which would only install them where they already are."""
    if requested in ENGINE_ALIASES and set(ENGINE_ALIASES[requested or ""]) <= elsewhere:
        raise UserError(
            f"--engine {requested} is installed in its own environment, which Xinference's "
            "server cannot load: serve it without --via"
        )
    if requested is not None:
        return _check_requested(forms, profile, installed, rules, requested, hint_args)
    all_notes: list[str] = []
    for facts in forms:
        choice, notes = _choose_for_form(facts, profile, installed, rules, elsewhere)
        if choice is not None:
            return choice
        all_notes.extend(notes)
    wanted = "xllamacpp" if all(f.kind == "gguf" for f in forms) else "transformers"
    raise NotInstalled(
        f"no installed engine can serve this model ({'; '.join(all_notes)}): "
        f"{_install_hint([wanted], hint_args)}"
    )


def _check_requested(
    forms: Sequence[ModelFacts],
    profile: HostProfile,
    installed: frozenset[str],
    rules: ServeRules,
    requested: str,
    hint_args: str,
) -> EngineChoice:
    if requested not in ENGINE_ALIASES:
        raise UserError(f"unknown engine '{requested}' (choose from {', '.join(ENGINE_ALIASES)})")
    candidates = ENGINE_ALIASES[requested]
    reasons: list[str] = []
    for facts in forms:
        family = family_of(facts, rules)
        for engine in candidates:
            ok, why = _fit(engine, facts, family, profile, rules)
            if not ok:
                reasons.append(why)
                continue
            if engine in installed:
                return EngineChoice(engine, facts, family.name if family else None, f"requested; {why}")
            reasons.append(f"{engine} is not installed")
    if reasons and all(r.endswith("is not installed") for r in reasons):
        raise NotInstalled(f"{requested} is not installed here: {_install_hint(candidates, hint_args)}")
    raise UserError(
        f"--engine {requested} cannot serve this model here: "
        f"{'; '.join(dict.fromkeys(r for r in reasons if not r.endswith('is not installed')))}"
    )
