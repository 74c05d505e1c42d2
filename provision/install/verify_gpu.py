"""Verify's GPU checks: what a host without a GPU or driver proves from files, and what it defers.

Pure: facts in (from the environment's interpreter and from gpu_libs' reading of the files),
checks out. A check that needs the NVIDIA driver is recorded as deferred, by name, with ok
left True: it is not a failure here, and `verify` on a host with the driver runs it for real.
"""

from __future__ import annotations

from provision.install.verify import Check, EnvExpectation

NO_DRIVER = "a GPU host: the NVIDIA driver (libcuda.so.1) is not on this one"


def planned_cuda_archs(cmake_args: tuple[str, ...]) -> tuple[str, ...]:
    """sm_XY from the build's CMAKE_CUDA_ARCHITECTURES. Sample: ("-DCMAKE_CUDA_ARCHITECTURES=86;90-real",)
    -> ("sm_86", "sm_90")."""
    from provision.planner.cmake import option

    value = option(cmake_args, "CMAKE_CUDA_ARCHITECTURES")
    if not value:
        return ()
    return tuple(f"sm_{a.split('-')[0]}" for a in value.split(";") if a.split("-")[0].isdigit())


def wants_cuda(expect: EnvExpectation) -> bool:
    return bool(
        (expect.torch_variant or "").startswith("cu")
        or "cuda" in expect.llama_backends
        or expect.xllamacpp_build == "cuda"
    )


def driver_missing(expect: EnvExpectation, facts: dict) -> bool:
    return wants_cuda(expect) and facts.get("driver") is not None


def defer_if_driver(check: Check, expect: EnvExpectation, facts: dict) -> Check:
    """A failed check whose cause is the missing driver becomes a deferred one."""
    if check.ok or not driver_missing(expect, facts):
        return check
    if "libcuda.so" in check.detail or check.name in ("llama.cpp backends", "xllamacpp build"):
        return Check(check.backend, check.name, True, check.detail, deferred=NO_DRIVER)
    return check


def torch_device_check(expect: EnvExpectation, facts: dict) -> Check | None:
    """torch reaches every planned GPU: only on a host with the driver."""
    if not expect.gpu_archs or not (expect.torch_variant or "").startswith("cu") or "driver" not in facts:
        return None  # no GPU planned, or facts from before the driver was looked for
    name = f"torch sees the {len(expect.gpu_archs)} planned GPU model(s)"
    if driver_missing(expect, facts):
        return Check(
            "torch", name, True, "torch.cuda.is_available() and the device count", deferred=NO_DRIVER
        )
    torch = facts.get("torch") or {}
    count = torch.get("device_count")
    return Check("torch", name, bool(count), f"torch.cuda.device_count() = {count}")


def llama_static_checks(expect: EnvExpectation, static: dict | None) -> list[Check]:
    """From the CUDA library's own bytes: SASS for every planned arch, linked to cudart and cuBLAS
    that resolve inside the environment, and a glibc floor no newer than the target's."""
    if "cuda" not in expect.llama_backends or static is None:
        return []
    b = "llama-cpp-python"
    lib = static.get("lib")
    if lib is None:
        return [Check(b, "libggml-cuda present", False, "no libggml-cuda library in llama_cpp/lib")]
    checks = [Check(b, "libggml-cuda present", True, lib)]
    if static.get("code_error"):
        checks.append(Check(b, "GPU code for the planned archs", False, static["code_error"]))
    else:
        sass = static.get("sass") or []
        missing = [a for a in expect.llama_cuda_archs if a not in sass]
        checks.append(
            Check(
                b,
                "GPU code for the planned archs",
                not missing,
                f"SASS {' '.join(sass) or 'none'}; PTX {' '.join(static.get('ptx') or []) or 'none'}"
                + (f"; missing SASS for {' '.join(missing)}" if missing else ""),
            )
        )
    needed = static.get("needed") or []
    linked = [p for p in ("libcudart.so", "libcublas.so") if any(n.startswith(p) for n in needed)]
    unresolved = static.get("unresolved") or []
    ok = len(linked) == 2 and not unresolved
    checks.append(
        Check(
            b,
            "linked to cudart and cuBLAS in the environment",
            ok,
            f"needs {', '.join(needed)}; run path {':'.join(static.get('runpath') or []) or 'none'}"
            + (f"; not found through it: {', '.join(unresolved)}" if unresolved else ""),
        )
    )
    glibc = _glibc_check(expect, static)
    return checks + ([glibc] if glibc else [])


def _glibc_check(expect: EnvExpectation, static: dict) -> Check | None:
    if expect.glibc_floor is None or not static.get("glibc_max"):
        return None
    have = tuple(static["glibc_max"])
    want = expect.glibc_floor
    return Check(
        "llama-cpp-python",
        "glibc floor",
        have <= want,
        f"its libraries need glibc {have[0]}.{have[1]}; the target has {want[0]}.{want[1]}",
    )
