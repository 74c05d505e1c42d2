"""Re-derive a backend's recipe facts from a release's own files on an index.

For one table of recipes/backends.toml and one release, every fact the table holds that wheel
metadata or a real resolution can prove is derived again, each with the file it came from:
Requires-Python and the cp tags (python_min/python_max), exact torch pins (Requires-Dist),
the CUDA build of that torch (the nvidia-cuda-runtime pin in the resolved closure), glibc
floors (the lowest manylinux tag at which `uv pip compile --no-build` resolves the whole
closure, as recipes/backends.toml's comments describe), extras (Provides-Extra), and
xinference's click pin with the huggingface-hub release that first needs a newer click.

What cannot be derived from metadata (GPU generations, driver floors outside torch.toml, disk
use, ROCm facts read from docs) is listed as assumed. What no longer holds the way the recipes
assume (a conflict, a dropped wheel, a changed environment layout) is a blocker: the caller
writes none of that backend's facts and a human decides.
"""

from __future__ import annotations

import email.message
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from provision.planner import index_meta
from provision.planner.index_meta import Compiled, IndexFile, IndexView
from provision.planner.recipes import Recipes
from provision.planner.versions import vtuple

# Keys that describe how a backend is run, not what its release requires: never derived.
NOT_FACTS = frozenset(
    {"dist", "import_check", "environment", "needs_torch", "xinference_engine", "adapter", "extra_for"}
)
# What `manylinux1/2010/2014` mean (PEP 600's legacy aliases).
_LEGACY_MANYLINUX = {"manylinux1": "2.5", "manylinux2010": "2.12", "manylinux2014": "2.17"}
_MANYLINUX = re.compile(r"^(manylinux_(\d+)_(\d+)|manylinux1|manylinux2010|manylinux2014)_(x86_64|aarch64)$")
_CUDA_RUNTIME = re.compile(r"^nvidia-cuda-runtime(-cu\d+)?$")
_DEFAULT_PYTHON = "3.12"


@dataclass(frozen=True)
class Fact:
    table: str
    key: str
    old: Any
    new: Any
    source: str

    @property
    def changed(self) -> bool:
        return bool(self.old != self.new)


@dataclass
class Derivation:
    backend: str
    version: str
    facts: list[Fact] = field(default_factory=list)
    assumed: list[str] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)

    @property
    def changed(self) -> list[Fact]:
        return [f for f in self.facts if f.changed]


# ---------------------------------------------------------------- pure helpers


def glibc_of(f: IndexFile) -> dict[str, str]:
    """{arch: glibc floor} a wheel's manylinux tags say: manylinux_2_28_x86_64 -> {'x86_64': '2.28'}."""
    out: dict[str, str] = {}
    for tag in parse_wheel_filename(f.filename)[3]:
        m = _MANYLINUX.match(tag.platform)
        if not m:
            continue
        floor = f"{m.group(2)}.{m.group(3)}" if m.group(2) else _LEGACY_MANYLINUX[m.group(1)]
        arch = m.group(4)
        if arch not in out or vtuple(floor) < vtuple(out[arch]):
            out[arch] = floor
    return out


def manylinux_floor(files: list[IndexFile]) -> tuple[str, tuple[str, ...]] | None:
    """(glibc, its tag names) of the lowest manylinux tag among `files`; a wheel tagged
    manylinux_2_17_x86_64.manylinux2014_x86_64 gives ('2.17', ('manylinux_2_17', 'manylinux2014'))."""
    best: tuple[str, tuple[str, ...]] | None = None
    for f in files:
        if not f.wheel:
            continue
        for tag in parse_wheel_filename(f.filename)[3]:
            m = _MANYLINUX.match(tag.platform)
            if not m:
                continue
            floor = f"{m.group(2)}.{m.group(3)}" if m.group(2) else _LEGACY_MANYLINUX[m.group(1)]
            if best is None or vtuple(floor) < vtuple(best[0]):
                best = (floor, (m.group(1),))
            elif floor == best[0] and m.group(1) not in best[1]:
                best = (floor, (*best[1], m.group(1)))
    return (best[0], tuple(sorted(best[1]))) if best else None  # tag sets are unordered


def python_tags(f: IndexFile) -> tuple[str | None, str | None]:
    """(oldest, newest) CPython a wheel's tags name; newest is None for abi3/py3 wheels."""
    lo: str | None = None
    hi: str | None = None
    open_ended = False
    for tag in parse_wheel_filename(f.filename)[3]:
        m = re.match(r"^cp(\d)(\d+)$", tag.interpreter)
        if not m:
            open_ended = True  # py3 / pure wheels: any Python the Requires-Python allows
            continue
        v = f"{m.group(1)}.{m.group(2)}"
        lo = v if lo is None or vtuple(v) < vtuple(lo) else lo
        if tag.abi == "abi3":
            open_ended = True
        hi = v if hi is None or vtuple(v) > vtuple(hi) else hi
    return (None if open_ended and lo is None else lo), (None if open_ended else hi)


def python_range(requires_python: str | None) -> tuple[str | None, str | None]:
    """'>=3.11,<3.15' -> ('3.11', '3.14'); '>=3.10' -> ('3.10', None)."""
    lo: str | None = None
    hi: str | None = None
    for s in SpecifierSet(requires_python or ""):
        rel = Version(s.version).release
        if s.operator in (">=", "~=", "=="):
            lo = f"{rel[0]}.{rel[1] if len(rel) > 1 else 0}"
        elif s.operator == "<":
            minor = rel[1] if len(rel) > 1 else 0
            hi = f"{rel[0]}.{minor - 1}" if minor > 0 else None
        elif s.operator == "<=":
            hi = f"{rel[0]}.{rel[1] if len(rel) > 1 else 0}"
    return lo, hi


def requirements(meta: email.message.Message, env: Mapping[str, str]) -> list[Requirement]:
    """Requires-Dist entries that apply on `env` (no extra asked)."""
    out = []
    for line in meta.get_all("Requires-Dist") or []:
        try:
            r = Requirement(line)
        except InvalidRequirement:
            continue
        if r.marker is None or r.marker.evaluate({**env, "extra": ""}):
            out.append(r)
    return out


def marker_env(arch: str, python: str) -> dict[str, str]:
    return {
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": arch,
        "os_name": "posix",
        "python_version": python,
        "python_full_version": f"{python}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }


def exact_pin(reqs: list[Requirement], name: str) -> str | None:
    """'2.14.0' for torch==2.14.0 among `reqs`; None when `name` is not pinned exactly."""
    for r in reqs:
        if canonicalize_name(r.name) == canonicalize_name(name):
            specs = list(r.specifier)
            if len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version:
                return specs[0].version
    return None


def cuda_variant(pins: Mapping[str, str]) -> tuple[str, str] | None:
    """('cu130', '13') from nvidia-cuda-runtime(-cu13)==13.0.96 in a resolved closure."""
    for name, version in pins.items():
        if _CUDA_RUNTIME.match(name):
            rel = Version(version).release
            return f"cu{rel[0]}{rel[1] if len(rel) > 1 else 0}", str(rel[0])
    return None


def click_floor(meta: email.message.Message) -> str | None:
    """The `>=` floor a distribution's Requires-Dist puts on click (None: no floor)."""
    for r in requirements(meta, marker_env("x86_64", _DEFAULT_PYTHON)):
        if canonicalize_name(r.name) == "click":
            for s in r.specifier:
                if s.operator in (">=", ">"):
                    return s.version
    return None


# ---------------------------------------------------------------- the derivation


class _Ctx:
    def __init__(self, view: IndexView, name: str, table: Mapping[str, Any], version: Version) -> None:
        self.view, self.name, self.t, self.version = view, name, table, version
        self.d = Derivation(name, str(version))
        self.dist = str(table["dist"])

    def fact(self, key: str, new: Any, source: str) -> None:
        if key in self.t:
            self.d.facts.append(Fact(self.name, key, self.t[key], new, f"{source} on {self.view.label}"))

    def block(self, why: str) -> None:
        self.d.blockers.append(why)


def _pick(files: list[IndexFile], arch: str) -> IndexFile | None:
    wheels = [f for f in files if f.wheel]
    for f in wheels:
        if arch in glibc_of(f):
            return f
    generic = [f for f in wheels if any(t.platform == "any" for t in parse_wheel_filename(f.filename)[3])]
    return generic[0] if generic else None


def _python_facts(c: _Ctx, files: list[IndexFile], meta: email.message.Message, where: str) -> str:
    lo, hi = python_range(meta.get("Requires-Python"))
    wheels = [f for f in files if f.wheel and glibc_of(f)]
    tag_ranges = [python_tags(f) for f in wheels]
    tag_lo = min((t[0] for t in tag_ranges if t[0]), key=vtuple, default=None)
    tag_hi = (
        None
        if any(t[1] is None for t in tag_ranges)
        else max((t[1] for t in tag_ranges if t[1]), key=vtuple, default=None)
    )
    if tag_lo and (lo is None or vtuple(tag_lo) > vtuple(lo)):
        lo = tag_lo
    if tag_hi and (hi is None or vtuple(tag_hi) < vtuple(hi)):
        hi = tag_hi
    rp = meta.get("Requires-Python") or "(none)"
    src = f"{c.dist} {c.version} Requires-Python {rp} and wheel tags ({where})"
    if lo:
        c.fact("python_min", lo, src)
        c.fact("requires_python", lo, src)
    if "python_max" in c.t:
        if hi is None:
            c.block(
                f"{c.dist} {c.version} sets no newest Python (python_max {c.t['python_max']} in the recipes)"
            )
        else:
            c.fact("python_max", hi, src)
    env_py = str(c.t.get("env_python") or _DEFAULT_PYTHON)
    if lo and vtuple(env_py) < vtuple(lo) or hi and vtuple(env_py) > vtuple(hi):
        c.block(f"{c.dist} {c.version} needs Python {lo}-{hi or 'any'}; env_python {env_py} is outside it")
    return env_py


def _extras(c: _Ctx, meta: email.message.Message, where: str) -> None:
    offered = {canonicalize_name(e) for e in meta.get_all("Provides-Extra") or []}
    wanted = list(c.t.get("extras") or []) + list((c.t.get("extra_for") or {}).values())
    wanted += [c.t["apple_silicon_extra"]] if "apple_silicon_extra" in c.t else []
    missing = [e for e in wanted if canonicalize_name(e) not in offered]
    if missing:
        c.block(
            f"{c.dist} {c.version} no longer offers the extra(s) {', '.join(missing)} "
            f"({where} Provides-Extra)"
        )
    elif "extras" in c.t:
        c.fact("extras", list(c.t["extras"]), f"{c.dist} {c.version} Provides-Extra ({where})")


def _glibc_floor(
    c: _Ctx, reqs: list[str], arch: str, wheel_floor: str, python: str
) -> tuple[str | None, Compiled]:
    """The lowest manylinux tag uv knows at which the whole closure resolves for `arch`."""
    tags = [t for t in c.view.recipes.resolve.manylinux.get(arch, ()) if vtuple(t) >= vtuple(wheel_floor)]
    if not tags:
        return None, Compiled(False, {}, f"no manylinux tag at or above {wheel_floor} for {arch}")
    # The newest tag first: when even it does not resolve, no floor does (a conflict, not glibc).
    top = c.view.compile(reqs, f"{arch}-manylinux_{tags[-1].replace('.', '_')}", python)
    if not top.ok:
        return None, top
    for tag in tags[:-1]:
        last = c.view.compile(reqs, f"{arch}-manylinux_{tag.replace('.', '_')}", python)
        if last.ok:
            return tag, last
    return tags[-1], top


def _arches(t: Mapping[str, Any]) -> list[str]:
    if "glibc" in t:
        return ["x86_64", "aarch64"]
    return [a for a in ("x86_64", "aarch64") if f"glibc_{a}" in t] or ["x86_64"]


def _torch_and_glibc(c: _Ctx, files: list[IndexFile], meta: email.message.Message, python: str) -> None:
    reqs = [f"{c.dist}=={c.version}"]
    torch = None
    if "torch" in c.t:
        torch = exact_pin(requirements(meta, marker_env("x86_64", python)), "torch")
        if torch is None:
            c.block(
                f"{c.dist} {c.version} no longer pins torch exactly (Requires-Dist); "
                "the recipes assume it does"
            )
            return
        c.fact("torch", torch, f"{c.dist} {c.version} Requires-Dist torch=={torch}")
        reqs.append(f"torch=={torch}")
    floors: dict[str, str] = {}
    closure: dict[str, str] = {}
    failed: dict[str, list[str]] = {}  # uv's explanation -> the arches it was given for
    for arch in _arches(c.t):
        wheel = _pick(files, arch)
        if wheel is None:
            c.block(f"{c.dist} {c.version} has no wheel for Linux {arch} on {c.view.label} (a dropped wheel)")
            continue
        floor, done = _glibc_floor(c, reqs, arch, glibc_of(wheel).get(arch, "2.17"), python)
        if floor is None:
            failed.setdefault(done.error, []).append(arch)
            continue
        floors[arch] = floor
        closure = closure or done.pins
        platform = f"{arch}-manylinux_{floor.replace('.', '_')}"
        src = f"uv pip compile --no-build {' '.join(reqs)} --python-platform {platform}"
        c.fact(f"glibc_{arch}", floor, f"{src} (the lowest tag that resolves)")
    for error, arches in failed.items():
        c.block(f"{' + '.join(reqs)} does not resolve for Linux {'/'.join(arches)}, Python {python}: {error}")
    if "glibc" in c.t and len(floors) == 2:
        top = max(floors.values(), key=vtuple)
        c.fact(
            "glibc",
            top,
            f"uv pip compile --no-build {' '.join(reqs)}: the lowest manylinux tag that resolves "
            "on both arches",
        )
    if torch is not None and "torch_variant" in c.t and closure:
        variant = cuda_variant(closure)
        if variant is None:
            c.block(
                f"torch {torch} on {c.view.label} pulls no nvidia-cuda-runtime: not the CUDA build "
                "the recipes assume"
            )
            return
        runtime = closure_runtime(closure)
        src = f"torch {torch} Requires-Dist nvidia-cuda-runtime ({runtime} in the resolved closure)"
        c.fact("torch_variant", variant[0], src)
        c.fact("wheel_cuda", variant[1], src)
        build = next((b for b in c.view.recipes.torch.cuda if b.variant == variant[0]), None)
        if build is None:
            c.block(f"torch {torch} is a {variant[0]} build, which recipes/torch.toml does not list")
        else:
            c.fact("driver_min", build.driver_linux, f"recipes/torch.toml [[cuda]] {variant[0]} driver_linux")


def closure_runtime(pins: Mapping[str, str]) -> str:
    return ", ".join(f"{n}=={v}" for n, v in pins.items() if _CUDA_RUNTIME.match(n))


def _hub_chain(c: _Ctx, meta: email.message.Message) -> None:
    """xinference's click pin and the first huggingface-hub release that needs a newer click."""
    pin = next(
        (
            r
            for r in requirements(meta, marker_env("x86_64", _DEFAULT_PYTHON))
            if canonicalize_name(r.name) == "click"
        ),
        None,
    )
    if pin is None or not any(s.operator in ("<", "<=", "==", "~=") for s in pin.specifier):
        c.block(
            f"xinference {c.version} no longer caps click: vllm/sglang may co-install with it now, "
            "which changes the environment layout (a human decides)"
        )
        return
    c.fact("click_pin", str(pin), f"xinference {c.version} Requires-Dist {pin}")
    hub = c.view.files("huggingface-hub")
    rel = index_meta.releases(hub)

    def needs_more(v: Version) -> str | None:
        wheel = next((f for f in index_meta.files_of(hub, v) if f.wheel), None)
        floor = click_floor(c.view.metadata(wheel)) if wheel else None
        return floor if floor and Version(floor) not in pin.specifier else None

    lo, hi = 0, len(rel)  # first index whose click floor the pin excludes (releases only rise)
    while lo < hi:
        mid = (lo + hi) // 2
        if needs_more(rel[mid]):
            hi = mid
        else:
            lo = mid + 1
    if lo == len(rel):
        c.block(
            f"no huggingface-hub release needs a click beyond {pin}: the hub chain the recipes "
            "describe is gone"
        )
        return
    first = rel[lo]
    floor = needs_more(first)
    src = f"huggingface-hub {first} Requires-Dist click>={floor} (the first release {pin} excludes)"
    c.fact("hub_ceiling", str(first), src)
    c.fact("hub_click_min", floor, src)


def _coinstall_version(c: _Ctx, xinference: str) -> Version | None:
    """The newest release of this primary backend that co-installs with xinference (uv decides)."""
    extras = f"[{','.join(c.t['extras'])}]" if c.t.get("extras") else ""
    reqs = [f"xinference=={xinference}", f"{c.dist}{extras}"]
    done = c.view.compile(reqs, "x86_64-manylinux_2_28", _DEFAULT_PYTHON)
    if not done.ok:
        c.block(f"{' + '.join(reqs)} does not resolve: {done.error}")
        return None
    got = done.pins.get(canonicalize_name(c.dist))
    return Version(got) if got else None


def derive_backend(
    view: IndexView,
    name: str,
    table: Mapping[str, Any],
    version: Version | None = None,
    xinference: str | None = None,
) -> Derivation:
    """Every derivable fact of `table` for `version` (default: the newest release on the index;
    transformers: the newest that co-installs with `xinference`, default the recipe's)."""
    dist = str(table["dist"])
    how = "the release asked for"
    if version is None and name == "transformers":
        x = xinference or str(view.recipes.version("xinference"))
        probe = _Ctx(view, name, table, Version(str(table["version"])))
        version = _coinstall_version(probe, x)
        if version is None:
            return probe.d
        how = f"the newest release that co-installs with xinference {x} (uv pip compile)"
    elif version is None:
        version = view.newest(dist)
        how = "the newest release listed"
        if version is None:
            d = Derivation(name, str(table["version"]))
            d.blockers.append(f"{dist} has no release on {view.label}")
            return d
        if version < Version(str(table["version"])):
            d = Derivation(name, str(version))
            d.blockers.append(
                f"{how} on {view.label} is {version}, older than the recipes' {table['version']} "
                "(a mirror behind PyPI, or a release withdrawn)"
            )
            return d
    c = _Ctx(view, name, table, version)
    files = index_meta.files_of(view.files(dist), version)
    if not files:
        c.block(f"{dist} {version} is not on {view.label}")
        return c.d
    c.fact("version", str(version), f"{dist} {version}: {how}")
    meta_file = _pick(files, "x86_64") or next((f for f in files if f.wheel), None) or files[0]
    meta = view.metadata(meta_file)
    python = _python_facts(c, files, meta, meta_file.filename)
    _extras(c, meta, meta_file.filename)
    floor = manylinux_floor(files)
    if floor is not None:  # a backend whose wheels are its whole closure (xllamacpp: no deps)
        src = f"{dist} {version} wheel tags ({'.'.join(floor[1])})"
        c.fact("linux_glibc_min", floor[0], src)
        # Aliases of one floor name the same wheels: the recipes' spelling stays when it is one.
        c.fact("linux_tag", table["linux_tag"] if table.get("linux_tag") in floor[1] else floor[1][0], src)
    if not any(f.wheel for f in files):
        _sdist_facts(c, meta, meta_file)
    elif _has_linux_facts(table):
        _torch_and_glibc(c, files, meta, python)
    if name == "xinference":
        _hub_chain(c, meta)
    _version_rules(c)
    derived = {f.key for f in c.d.facts}
    c.d.assumed = [k for k in table if k not in derived and k not in NOT_FACTS]
    return c.d


def _has_linux_facts(t: Mapping[str, Any]) -> bool:
    return any(k in t for k in ("torch", "glibc", "glibc_x86_64", "glibc_aarch64"))


def _sdist_facts(c: _Ctx, meta: email.message.Message, f: IndexFile) -> None:
    reqs = [str(r) for r in requirements(meta, marker_env("x86_64", _DEFAULT_PYTHON)) if r.marker is None]
    c.fact("requires", reqs, f"{c.dist} {c.version} PKG-INFO Requires-Dist ({f.filename}, sdist only)")


# Facts read by hand from sources other than the wheels, tied to one version: a new version
# needs a human to read them again. (table, why) -> whether `version` is still the described one.
_HAND_READ: dict[str, Callable[[Recipes, str], str | None]] = {
    "llama-cpp-python": lambda r, v: (
        None
        if v == r.llama_cpp.for_version
        else f"recipes/llama_cpp.toml's CMake flag names are for llama-cpp-python {r.llama_cpp.for_version} "
        f"(read from its vendored llama.cpp CMakeLists): re-read them for {v}, then set for_version"
    ),
    "xllamacpp": lambda r, v: (
        None
        if v == r.xllamacpp.version
        else f"xllamacpp's GPU indexes and their architecture lists (its README) were read for "
        f"{r.xllamacpp.version}: "
        f"check that {v} is on them and re-read the coverage tables"
    ),
}


def _version_rules(c: _Ctx) -> None:
    rule = _HAND_READ.get(c.name)
    why = rule(c.view.recipes, str(c.version)) if rule else None
    if why:
        c.block(why)
