"""Where the torch family (torch, torchvision, torchaudio) comes from, for the planned variant.

Order, written down once:
  0. PyPI itself, when PyPI's own torch wheel for this platform is the planned variant
     (recipes/torch.toml [[pypi_default]]) and the plan uses PyTorch's own index (not a mirror
     the user named): no PyTorch index is needed at all.
  1. The plan's torch index for the variant (e.g. https://download.pytorch.org/whl/cpu, or the
     user's mirror of it), when it answers a quick request.
  2. Otherwise a build with the variant's local tag (`2.13.0+cpu`, `+cu126`) found in the
     configured find-links and indexes (pip.conf, PIP_*, our flags).
  3. Otherwise a clear failure naming the variant. Never a different variant: a `+cpu` site
     asking for cu126 must not quietly get CPU torch, nor the reverse.
The PyPI default build (no local tag) is right only where the plan says index_url is None.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from provision.errors import OperationFailed
from provision.install.index_pages import index_reachable, list_wheels

TORCH_FAMILY = ("torch", "torchvision", "torchaudio")
# What PyTorch's indexes ship for a torch build besides the family itself: the compiler and the
# CUDA runtime pieces. These come from the planned torch index only (torchtriton showed why).
_FAMILY_PREFIXES = ("triton", "pytorch-triton", "nvidia-")


def is_torch_family(name: str) -> bool:
    n = canonicalize_name(name)
    return n in TORCH_FAMILY or n.startswith(_FAMILY_PREFIXES)


@dataclass(frozen=True)
class TorchSource:
    """How to get the torch family for one environment."""

    variant: str
    # The index to install torch from; None when the build comes from find-links/mirrors.
    index_url: str | None
    # Exact requirement for torch (e.g. "torch==2.13.0+cpu") or the plan's spec ("torch>=2.6").
    torch_requirement: str
    # Companion pins available for the same build, e.g. ("torchvision==0.28.0+cpu",).
    companions: tuple[str, ...]
    reason: str
    from_pypi: bool = False  # PyPI's own wheel is the planned variant (order step 0)


def pick_build(filenames: list[str], variant: str, spec: str, python_tag: str, arch: str) -> Version | None:
    """The newest version among `filenames` with local tag == variant, for this Python and arch."""
    best: Version | None = None
    specifier = SpecifierSet(spec or "")
    for name in filenames:
        try:
            _, version, _, tags = parse_wheel_filename(name)
        except InvalidWheelFilename:
            continue
        if version.local != variant:
            continue
        if not any(t.interpreter in (python_tag, "py3") and arch in t.platform for t in tags):
            continue
        # A local version matches "==2.13.0" by PEP 440; strip the tag for range specifiers.
        if not specifier.contains(Version(version.public), prereleases=True):
            continue
        if best is None or version > best:
            best = version
    return best


def companion_minor(torch_version: Version, project: str) -> str:
    """The release series of a companion built for this torch: 2.13 -> torchvision 0.28.

    PyTorch's release matrix since torch 2.0 / torchvision 0.15; torchaudio follows torch's number.
    A companion built for another torch fails to load its C++ ops.
    """
    if project == "torchvision":
        return f"0.{torch_version.minor + 15}"
    return f"{torch_version.major}.{torch_version.minor}"


def local_build_source(
    variant: str, spec: str | None, sources: tuple[str, ...], python_tag: str, arch: str
) -> TorchSource:
    """Step 2 of the order: a matching local-tagged build from the configured mirrors."""
    torch = pick_build(list_wheels(sources, "torch"), variant, spec or "", python_tag, arch)
    if torch is None:
        where = ", ".join(sources) or "no find-links or index configured"
        raise OperationFailed(
            f"no torch build for variant '{variant}' (torch{spec or ''}+{variant}, {python_tag}, {arch}) "
            f"is reachable: the PyTorch index is unreachable and none was found in {where}; "
            f"put a torch-*+{variant} wheel in a find-links directory or pass --torch-index-url MIRROR"
        )
    companions = []
    for project in ("torchvision", "torchaudio"):
        series = companion_minor(torch, project)
        found = pick_build(list_wheels(sources, project), variant, f"=={series}.*", python_tag, arch)
        if found is not None:
            companions.append(f"{project}=={found}")
    return TorchSource(
        variant=variant,
        index_url=None,
        torch_requirement=f"torch=={torch}",
        companions=tuple(companions),
        reason=f"the torch index is unreachable; torch {torch} found in the configured find-links/indexes",
    )


@dataclass(frozen=True)
class PypiDefault:
    """Which build PyPI's own torch wheel is for one release and platform (recipes/torch.toml)."""

    torch: str
    platform: str  # "linux-x86_64"
    variant: str


def pypi_defaults() -> tuple[PypiDefault, ...]:
    from provision.planner.recipes import read_recipe

    data = read_recipe("torch.toml")
    return tuple(PypiDefault(**e) for e in data.get("pypi_default", ()))


def pypi_default_build(
    entries: tuple[PypiDefault, ...], variant: str, spec: str | None, platform: str
) -> PypiDefault | None:
    """The newest PyPI torch release that is the planned variant on this platform and meets spec.

    Sample: (2.14.0 cu130, 2.14.1 cu130, 2.15.0 cu132), "cu130", "", "linux-x86_64" -> 2.14.1;
    with spec "==2.14.0" -> 2.14.0; variant "cu126" -> None (PyPI has no such build).
    """
    specifier = SpecifierSet(spec or "")
    fits = [
        e
        for e in entries
        if e.variant == variant and e.platform == platform and specifier.contains(Version(e.torch))
    ]
    return max(fits, key=lambda e: Version(e.torch), default=None)


def resolve_torch_source(
    variant: str,
    planned_index: str | None,
    spec: str | None,
    sources: tuple[str, ...],
    python_tag: str,
    arch: str,
    reachable=index_reachable,
    pypi: tuple[PypiDefault, ...] = (),
    platform: str = "",
) -> TorchSource:
    """Apply the order in the module docstring to one environment's torch choice.

    `pypi` is empty where PyPI is not to be asked (offline, or a torch mirror the user named)."""
    on_pypi = pypi_default_build(pypi, variant, spec, platform) if planned_index is not None else None
    if on_pypi is not None:
        return TorchSource(
            variant,
            None,
            f"torch=={on_pypi.torch}",
            (),
            f"PyPI's torch {on_pypi.torch} for {platform} is the {variant} build: no PyTorch index needed",
            from_pypi=True,
        )
    if planned_index is None:
        return TorchSource(variant, None, f"torch{spec or ''}", (), "the default index carries this variant")
    if reachable(planned_index):
        found = local_build_source(variant, spec, (planned_index, *sources), python_tag, arch)
        return TorchSource(
            variant, planned_index, found.torch_requirement, found.companions, f"from {planned_index}"
        )
    return local_build_source(variant, spec, sources, python_tag, arch)
