"""Environment variables every build, engine and `serve` process needs on this kind of host.

- HSA_OVERRIDE_GFX_VERSION for RDNA2 targets without rocBLAS kernels (gfx1031-1036 run
  gfx1030 code; recipes/host_classes.toml [rocm_override]).
- WSL2: the Windows driver's libcuda directory first on LD_LIBRARY_PATH.

runtime_env(profile, environ) is pure. host_runtime_env() is for places that have no profile
(the engine servers): it reads only the files those two facts come from, once per process.
A value the user set already is kept: they may know better (another override, a custom path).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache

from provision.planner.host_classes import gfx_override, load_host_classes
from provision.profile import HostProfile


def runtime_env(profile: HostProfile, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables to add to a child process's environment (empty on most hosts)."""
    environ = os.environ if environ is None else environ
    rec = load_host_classes()
    out: dict[str, str] = {}
    o = gfx_override(profile, rec)
    if o is not None and o.applies and "HSA_OVERRIDE_GFX_VERSION" not in environ:
        out["HSA_OVERRIDE_GFX_VERSION"] = o.hsa
    if profile.wsl and profile.nvidia_gpus:
        lib = profile.platform.wsl_lib_dir or rec.wsl_lib_dir
        current = [p for p in environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        if lib not in current:
            out["LD_LIBRARY_PATH"] = os.pathsep.join([lib, *current])
    return out


@cache
def _host_profile_for_env() -> HostProfile | None:
    """A minimal profile of this machine: its AMD gfx targets (KFD topology) and WSL2's library
    directory. No commands run; a failure means no variables, never an error."""
    try:
        from provision.probe.host import probe_host_light

        return probe_host_light()
    except Exception:
        return None


def host_runtime_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """runtime_env() for this machine, for processes started without a profile at hand."""
    profile = _host_profile_for_env()
    return runtime_env(profile, environ) if profile is not None else {}
