"""`xinfer-setup probe`: print this machine's profile as a table, or as v1 JSON."""

from __future__ import annotations

import click

from provision.commands import options
from provision.profile import GPU, HostProfile

# The first line of the help is the CLI table's (provision/cli.py); this is the rest.
DETAILS = """Prints OS, CPU, memory, GPUs, NVIDIA driver, ROCm and build tools. With --json, prints
the host profile (schema v1) that `xinfer-setup plan --profile FILE` reads.

\b
Environment overrides (for CI and containers with no GPU attached):
  XINFER_SETUP_CUDA_DRIVER_VERSION=580.65.06   take this NVIDIA driver version
                                               (as uv's UV_CUDA_DRIVER_VERSION); the
                                               GPUs are still probed
  XINFER_SETUP_CUDA_ARCH=8.0,9.0               plan for NVIDIA GPUs of these compute
                                               capabilities (with the driver override,
                                               nothing is probed: container builds)
  XINFER_SETUP_AMD_GPU_ARCHITECTURE=gfx942     plan for these AMD targets
                                               (comma-separated: gfx942,gfx90a)
  XINFER_SETUP_NO_GPU=1                        consult no GPU source at all
"""


def _or_dash(value: object) -> str:
    return "-" if value in (None, "") else str(value)


def _gpu_line(gpu: GPU) -> str:
    parts = [gpu.name]
    if gpu.memory_mb is not None:
        parts.append(f"{gpu.memory_mb} MiB")
    if gpu.compute_capability:
        parts.append(f"sm {gpu.compute_capability}")
    if gpu.gfx:
        parts.append(gpu.gfx)
    index = "" if gpu.index is None else f"#{gpu.index} "
    return f"{gpu.vendor} {index}" + ", ".join(parts)


def render_table(profile: HostProfile) -> str:
    o, c, t = profile.os, profile.cpu, profile.toolchain
    rows: list[tuple[str, str]] = [
        ("OS", f"{o.system} {_or_dash(o.release)} {o.machine}" + (f" ({o.libc})" if o.libc else "")),
        ("Python", f"{profile.python.version} ({profile.python.implementation})"),
        ("CPU", f"{_or_dash(c.brand)}, {_or_dash(c.cores)} cores"),
        (
            "CPU flags",
            " ".join(
                f
                for f in c.flags
                if f.startswith(("avx", "fma", "f16c", "amx", "sve", "neon", "asimd", "bf16", "i8mm"))
            )
            or "-",
        ),
        ("Memory", f"{profile.memory_mb} MiB" if profile.memory_mb is not None else "unknown"),
    ]
    rows += [("GPU", _gpu_line(g)) for g in profile.gpus] or [("GPU", "none")]
    n = profile.nvidia
    rows.append(
        (
            "NVIDIA driver",
            f"{n.driver_version}, CUDA {_or_dash(n.cuda_driver_version)} (from {n.source})" if n else "none",
        )
    )
    rows.append(("ROCm", _or_dash(profile.rocm.version) if profile.rocm else "none"))
    cublas = {None: "", True: " (with cuBLAS)", False: " (no cuBLAS)"}[t.cuda_cublas]
    rows += [
        ("cmake", _or_dash(t.cmake)),
        ("C compiler", _or_dash(t.cc)),
        ("nvcc", _or_dash(t.nvcc) + (cublas if t.nvcc else "")),
        ("hipcc", _or_dash(t.hipcc)),
        ("ninja", _or_dash(t.ninja)),
        ("ccache", _or_dash(t.ccache)),
    ]
    rows += [("Note", note) for note in profile.notes]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@options.command("probe", DETAILS)
@options.as_json("Print the host profile as JSON (schema v1).")
def probe(as_json: bool) -> None:
    from provision.probe import probe_host

    profile = probe_host()
    click.echo(profile.to_json() if as_json else render_table(profile))
