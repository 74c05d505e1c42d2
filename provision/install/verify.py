"""Is what is installed still what the plan wanted?

Facts come from each environment's own interpreter (one subprocess per environment: imports,
torch's build, torchvision's ops, llama.cpp's backend libraries). Judging them against the
plan is a pure function, tested on recorded facts.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from provision.backends import registry
from provision.install.wheelhouse import backends_in_names

# Backend -> the statements that prove it loads (the registry's import_check).
IMPORT_CHECKS = {b.name: b.import_check for b in registry()}

# Runs inside the environment being checked; stdlib + whatever is installed there.
_FACTS_SCRIPT = r"""
import json, os, sys, importlib.util, traceback
checks = json.loads(sys.argv[1])
facts = {"imports": {}, "torch": None, "torchvision": None, "llama_cpp_libs": None}
for name, code in checks.items():
    try:
        exec(code, {})
        facts["imports"][name] = None
    except BaseException as e:
        facts["imports"][name] = (type(e).__name__ + ": " + str(e)).strip().splitlines()[-1][:400]
if importlib.util.find_spec("torch") is not None:
    try:
        import torch
        t = {"version": torch.__version__, "cuda": torch.version.cuda,
             "hip": getattr(torch.version, "hip", None)}
        try:
            t["arch_list"] = torch.cuda.get_arch_list() if t["cuda"] or t["hip"] else []
        except Exception:
            t["arch_list"] = []
        facts["torch"] = t
    except BaseException as e:
        facts["torch"] = {"error": type(e).__name__ + ": " + str(e)[:400]}
if importlib.util.find_spec("torchvision") is not None:
    from importlib import metadata
    tv = {"version": metadata.version("torchvision"), "error": None}
    try:
        import torchvision  # noqa
        import torch
        torch.ops.torchvision.nms
    except BaseException as e:
        tv["error"] = (type(e).__name__ + ": " + str(e)).strip().splitlines()[-1][:400]
    facts["torchvision"] = tv
spec = importlib.util.find_spec("llama_cpp")
if spec is not None and spec.submodule_search_locations:
    lib = os.path.join(list(spec.submodule_search_locations)[0], "lib")
    facts["llama_cpp_libs"] = ["lib/" + n for n in sorted(os.listdir(lib))] if os.path.isdir(lib) else []
print("\n@@FACTS@@" + json.dumps(facts))
"""


def checks_fingerprint() -> str:
    """Identifies the checks themselves, so results recorded by older checks are not reused."""
    import hashlib

    text = repr(sorted(IMPORT_CHECKS.items())) + _FACTS_SCRIPT
    return hashlib.sha256(text.encode()).hexdigest()[:16]



@dataclass(frozen=True)
class Check:
    backend: str  # the backend it belongs to, or "torch" for environment-wide checks
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EnvExpectation:
    """What the plan wants of one environment."""

    backends: tuple[str, ...]
    torch_variant: str | None  # None: the environment has no torch planned
    gpu_archs: tuple[str, ...] = ()  # "sm_90" / "gfx942" of the GPUs present
    llama_backends: tuple[str, ...] = ()  # ggml backends the llama-cpp-python build must contain


def collect_facts(python: Path, backends: tuple[str, ...], timeout_s: int = 600) -> dict:
    checks = {b: IMPORT_CHECKS[b] for b in backends if b in IMPORT_CHECKS}
    try:
        out = subprocess.run(
            [str(python), "-c", _FACTS_SCRIPT, json.dumps(checks)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"cannot run {python}: {e}"}
    marker = out.stdout.rfind("@@FACTS@@")
    if marker < 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"{python} crashed while checking (exit {out.returncode}): {last}"}
    return json.loads(out.stdout[marker + len("@@FACTS@@") :])


def torch_variant_of(version: str, cuda: str | None, hip: str | None) -> str:
    """The variant a torch build is: its local tag when it has one, else from what it was built with.

    Samples: ("2.13.0+cpu", None, None) -> cpu; ("2.9.1+cu128", "12.8", None) -> cu128;
    ("2.11.0", "13.0", None) -> cu130 (PyPI's default Linux build has no tag);
    ("2.5.1+rocm6.2", None, "6.2.41133-dd7f95766") -> rocm6.2.
    """
    local = version.split("+", 1)[1] if "+" in version else None
    if local:
        return local
    if cuda:
        return "cu" + cuda.replace(".", "")
    if hip:
        return "rocm" + ".".join(hip.split(".")[:2])
    return "cpu"


def _variant_ok(planned: str, actual: str) -> bool:
    # macOS arm64 takes the default wheel, which is a CPU build with MPS inside.
    return planned == actual or (planned == "mps" and actual == "cpu")


def arch_covered(arch: str, arch_list: list[str]) -> bool:
    """sm_86 is covered by sm_86 itself, or by PTX (compute_XY) of the same major at or below it."""
    if arch in arch_list:
        return True
    if arch.startswith("sm_"):
        cap = int(arch[3:])
        return any(
            a.startswith("compute_") and int(a[8:]) // 10 == cap // 10 and int(a[8:]) <= cap
            for a in arch_list
            if a[8:].isdigit()
        )
    return False


def evaluate(expect: EnvExpectation, facts: dict) -> list[Check]:
    if "error" in facts:
        return [Check(b, "environment", False, facts["error"]) for b in expect.backends]
    checks: list[Check] = []
    for b in expect.backends:
        err = facts["imports"].get(b, "not checked")
        checks.append(Check(b, "import", err is None, "imports" if err is None else err))
    torch = facts.get("torch")
    if expect.torch_variant is not None:
        if not torch or "error" in torch:
            detail = (torch or {}).get("error", "torch is not installed")
            checks.append(Check("torch", "torch variant", False, detail))
        else:
            actual = torch_variant_of(torch["version"], torch.get("cuda"), torch.get("hip"))
            ok = _variant_ok(expect.torch_variant, actual)
            checks.append(
                Check(
                    "torch",
                    "torch variant",
                    ok,
                    f"torch {torch['version']} is {actual}"
                    + ("" if ok else f", the plan wants {expect.torch_variant}"),
                )
            )
            for arch in expect.gpu_archs:
                covered = arch_covered(arch, torch.get("arch_list") or [])
                checks.append(
                    Check(
                        "torch",
                        f"torch covers {arch}",
                        covered,
                        f"arch list: {' '.join(torch.get('arch_list') or []) or 'empty'}",
                    )
                )
    tv = facts.get("torchvision")
    if tv and torch and "version" in torch:
        t_tag = torch_variant_of(torch["version"], torch.get("cuda"), torch.get("hip"))
        tv_local = tv["version"].split("+", 1)[1] if "+" in tv["version"] else None
        mismatch = tv["error"] or (tv_local is not None and tv_local != t_tag)
        checks.append(
            Check(
                "torch",
                "torchvision matches torch",
                not mismatch,
                tv["error"] or f"torchvision {tv['version']} beside torch {torch['version']}",
            )
        )
    if "llama-cpp-python" in expect.backends and expect.llama_backends:
        libs = facts.get("llama_cpp_libs")
        found = backends_in_names(libs or [])
        missing = [b for b in expect.llama_backends if b not in found]
        checks.append(
            Check(
                "llama-cpp-python",
                "llama.cpp backends",
                not missing and libs is not None,
                f"has {', '.join(sorted(found)) or 'none'}"
                + (f"; missing {', '.join(missing)}" if missing else ""),
            )
        )
    return checks
