"""The torch step: the planned torch build into an environment (from the planned variant's index or
a matching local-tagged build), the pins that hold it through every later step, and afterwards a
torchvision that does not match it replaced or removed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from provision.errors import OperationFailed
from provision.install import state as state_mod
from provision.install.context import RunContext, fail_text
from provision.install.envs import EnvLocation
from provision.install.index_pages import index_reachable
from provision.install.torch_source import (
    TORCH_FAMILY,
    TorchSource,
    is_torch_family,
    pypi_defaults,
    resolve_torch_source,
)
from provision.plan import Environment


@dataclass(frozen=True)
class TorchStep:
    # Held as constraints by every later step in the environment, so none swaps the build.
    pins: list[str]
    # The environment record's "torch" entry: what was asked, from where, which version.
    record: dict[str, str]
    # Where a torch installed now came from (None when it was there already): its companions
    # include the torchvision built for it.
    source: TorchSource | None = None


def torch_step(ctx: RunContext, env: Environment, loc: EnvLocation, current: state_mod.EnvState) -> TorchStep:
    """Install the planned torch build if the installed one is not it; return the pins to hold."""
    choice = env.torch
    assert choice is not None
    torch = current.get("torch")
    spec = choice.version_spec or ""
    # A build from the default index (index_url None) carries no variant tag to compare.
    same_build = torch is not None and (choice.index_url is None or torch.local_tag == choice.variant)
    if torch is not None and same_build and not state_mod.unmet([f"torch{spec}"], current):
        pins = [f"torch=={torch.version}"]
        tv = current.get("torchvision")
        if tv and tv.local_tag == torch.local_tag:
            pins.append(f"torchvision=={tv.version}")
        pins += family_pins(current)
        return TorchStep(
            pins, {"requirement": pins[0], "source": "already installed", "version": torch.version}
        )
    py_version = current.markers.get("python_version") or f"{sys.version_info[0]}.{sys.version_info[1]}"
    py_tag = "cp" + py_version.replace(".", "")
    # PyPI's own wheel is asked for only online and when the plan uses PyTorch's index, not a
    # mirror the user named (--torch-index-url).
    ask_pypi = not ctx.opts.offline and not ctx.plan.request.torch_index_base
    profile_os = ctx.plan.profile.os
    source: TorchSource = resolve_torch_source(
        choice.variant,
        choice.index_url,
        spec,
        ctx.index.sources,
        py_tag,
        profile_os.arch,
        reachable=(lambda _url: False) if ctx.opts.offline else index_reachable,
        pypi=pypi_defaults() if ask_pypi else (),
        platform=f"{profile_os.system}-{profile_os.arch}",
    )
    ctx.reporter.say(f"[{env.name}] torch: {source.torch_requirement} ({source.reason})")
    extra = (source.index_url,) if source.index_url else ()
    # The torch family comes from the planned index only: for uv it is asked first (first-index),
    # for pip it is the only index.
    out = ctx.run(
        ctx.installer.install_argv(
            loc.python, [source.torch_requirement], extra_index_urls=extra, exclusive=True
        ),
        f"[{env.name}] installing {source.torch_requirement}",
        env.name,
    )
    if out.returncode != 0:
        raise OperationFailed(
            f"torch ({source.torch_requirement}, variant {choice.variant}) "
            f"failed to install: {fail_text(out)}"
        )
    record = {
        "requirement": source.torch_requirement,
        "source": source.index_url or ("PyPI" if source.from_pypi else "find-links/mirror"),
        "reason": source.reason,
        "version": source.torch_requirement.split("==", 1)[-1],
    }
    pins = [source.torch_requirement, *source.companions, *family_pins(ctx.state(loc))]
    return TorchStep(pins, record, source)


def family_pins(state: state_mod.EnvState) -> list[str]:
    """Exact pins for the torch family the torch step installed (triton, nvidia-*, ...): later steps
    resolve against other indexes and must not swap any of them for another index's build."""
    return [
        f"{d.name}=={d.version}"
        for d in state.dists.values()
        if is_torch_family(d.name) and d.name not in TORCH_FAMILY  # those three: torch_step decides
    ]


def fix_torchvision(ctx: RunContext, env: Environment, loc: EnvLocation, source: TorchSource | None) -> None:
    """A torchvision not built for this torch breaks transformers' imports: replace or remove it."""
    current = ctx.state(loc)
    torch, tv = current.get("torch"), current.get("torchvision")
    if not torch or not tv or tv.local_tag == torch.local_tag:
        return
    env_record = ctx.record.envs[env.name]
    match = next((c for c in (source.companions if source else ()) if c.startswith("torchvision==")), None)
    if match:
        out = ctx.run(
            ctx.installer.install_argv(loc.python, [match, f"torch=={torch.version}"]),
            f"[{env.name}] replacing torchvision {tv.version} with {match}",
            env.name,
        )
        if out.returncode == 0:
            env_record.notes.append(f"torchvision {tv.version} replaced by {match}")
            return
    out = ctx.run(
        ctx.installer.uninstall_argv(loc.python, ["torchvision"]),
        f"[{env.name}] removing torchvision {tv.version}: not built for torch {torch.version}",
        env.name,
    )
    note = (
        f"removed torchvision {tv.version}: it is not built for torch {torch.version} and no matching "
        f"build is reachable (it breaks transformers imports; only vision models need it)"
    )
    if out.returncode == 0:
        env_record.notes.append(note)
        ctx.record.notes.append(f"[{env.name}] {note}")
        ctx.reporter.say(f"[{env.name}] {note}")
