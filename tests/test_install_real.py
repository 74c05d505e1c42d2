"""Real installs into temporary environments on this machine (torch 2.13.0+cpu from the local wheel).

The plans are written out here (the CPU plan the planner makes for this machine) so these
tests exercise the installer alone. Slow: the first llama-cpp-python build is ~4.5 min cold;
after that the wheelhouse (~/.cache/xinfer-setup) makes it seconds.
"""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from provision.errors import OperationFailed
from provision.install.disk import check_free_disk
from provision.install.progress import Reporter
from provision.install.receipt import installed_backends, read_receipt, receipt_path
from provision.install.run import InstallOptions, install_plan
from provision.plan import BackendDecision, BuildSpec, Environment, Plan, PlanRequest, TorchChoice
from provision.profile import CPUInfo, HostProfile, OSInfo, PythonInfo, Toolchain

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "xinference": ("xinference[transformers]==4.1.0",),
    "transformers": ("transformers",),
    "llama-cpp-python": ("llama-cpp-python==0.3.36",),
    "xllamacpp": ("xllamacpp",),
}


def _closed_port_index(variant: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/whl/{variant}"


def _cpu_flags() -> tuple[str, ...]:
    """This CPU's flags as the probe reports them, so the wheelhouse key is the one `install --auto`
    uses (raw /proc/cpuinfo names differ from py-cpuinfo's: a second ~8 min llama.cpp build)."""
    from provision.probe import probe_host

    return tuple(probe_host().cpu.flags)


def cpu_plan(backends: tuple[str, ...], cmake_args: tuple[str, ...] = (), variant: str = "cpu") -> Plan:
    profile = HostProfile(
        os=OSInfo("linux", platform.release(), platform.machine(), "glibc 2.36"),
        python=PythonInfo(platform.python_version(), "cpython"),
        cpu=CPUInfo(None, 2, _cpu_flags()),
        memory_mb=24000,
        gpus=(),
        nvidia=None,
        rocm=None,
        toolchain=Toolchain(cmake="3.25"),
    )
    # The PyTorch index is unreachable here; a closed local port makes that explicit and fast.
    torch = TorchChoice(variant, _closed_port_index(variant), "no GPU")
    decisions = []
    for name in ("xinference", "transformers", "vllm", "sglang", "llama-cpp-python", "xllamacpp"):
        if name not in backends:
            decisions.append(BackendDecision(name, "skip", "not asked for"))
            continue
        build = BuildSpec(cmake_args, ("cpu",)) if name == "llama-cpp-python" else None
        decisions.append(
            BackendDecision(
                name,
                "install",
                "asked for",
                PACKAGES[name],
                environment="main",
                version="0.3.36" if build else None,
                build=build,
            )
        )
    env = Environment("main", backends, torch, tuple(p for b in backends for p in PACKAGES[b]), "primary")
    return Plan(profile, PlanRequest(backends=backends), torch, tuple(decisions), (env,))


def _install(plan: Plan, root: Path, **kw):
    return install_plan(plan, root, "uv", options=InstallOptions(**kw), reporter=Reporter(quiet=True))


def test_disk_check_refuses_with_the_numbers(tmp_path):
    with pytest.raises(OperationFailed, match=r"need about 999999999 MB, .* has \d+ MB free"):
        check_free_disk(999_999_999, [tmp_path / "not" / "yet"])


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory):
    root = tmp_path_factory.mktemp("xinf")
    plan = cpu_plan(("xinference", "transformers", "llama-cpp-python", "xllamacpp"))
    return root, plan, _install(plan, root)


@pytest.mark.slow
def test_cpu_plan_installs_and_verifies(provisioned):
    root, _, receipt = provisioned
    assert receipt.ok, [(b.name, b.status, b.reason, b.verify) for b in receipt.backends]
    statuses = {b.name: b.status for b in receipt.backends}
    assert statuses == {
        "xinference": "installed",
        "transformers": "installed",
        "vllm": "skipped",
        "sglang": "skipped",
        "llama-cpp-python": "installed",
        "xllamacpp": "installed",
    }
    env = receipt.environment("main")
    assert "torch==2.13.0+cpu" in env.packages
    assert "unreachable" in env.torch["reason"]
    # xinference's timm pulls PyPI's torchvision, which cannot load beside +cpu torch: removed, and said so.
    assert not any(p.startswith("torchvision==") for p in env.packages)
    assert any("removed torchvision" in n for n in env.notes)
    llama = receipt.backend("llama-cpp-python")
    assert "/wheelhouse/0.3.36-" in llama.source
    assert {c["name"] for c in llama.verify} >= {"import", "llama.cpp backends", "torch variant"}
    on_disk = read_receipt(receipt_path(root))
    assert on_disk.to_dict()["ok"] is True
    located = installed_backends(root)
    assert located["transformers"].python == root / "main" / "bin" / "python"


@pytest.mark.slow
def test_second_run_is_a_no_op_and_verify_passes(provisioned):
    root, plan, first = provisioned
    again = _install(plan, root)
    assert again.ok
    assert all(
        b.source in ("already installed",) or b.source.startswith("file://")
        for b in again.backends
        if b.status == "installed"
    )
    assert again.environment("main").packages == first.environment("main").packages
    out = subprocess.run(
        [sys.executable, "-m", "provision", "verify", "--venv", str(root), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"]
    # verify really ran its checks (it once passed with any one of them).
    checks = {(c["backend"], c["name"]) for c in report["checks"]}
    assert {(b, "import") for b in ("xinference", "transformers", "llama-cpp-python", "xllamacpp")} <= checks
    assert ("llama-cpp-python", "llama.cpp backends") in checks


@pytest.mark.slow
def test_replay_pins_every_package_from_the_receipt(provisioned, tmp_path):
    root, plan, first = provisioned
    pins = {"main": [p for p in first.environment("main").packages if not p.startswith("llama-cpp-python")]}
    replayed = _install(cpu_plan(("xinference", "transformers", "xllamacpp")), tmp_path, replay_pins=pins)
    assert replayed.ok
    got = set(replayed.environment("main").packages)
    want = set(pins["main"]) - {p for p in pins["main"] if p.startswith(("llama-cpp-python", "diskcache"))}
    assert want <= got


@pytest.mark.slow
def test_failed_build_leaves_the_rest_installed(tmp_path):
    # LLAMA_CUBLAS is a CMake FATAL_ERROR in today's llama.cpp: the build must fail, visibly.
    plan = cpu_plan(("llama-cpp-python", "xllamacpp"), cmake_args=("-DLLAMA_CUBLAS=on",))
    receipt = _install(plan, tmp_path)
    llama, xl = receipt.backend("llama-cpp-python"), receipt.backend("xllamacpp")
    assert llama.status == "failed"
    assert "build failed" in llama.reason and llama.log and Path(llama.log).exists()
    assert "LLAMA_CUBLAS" in Path(llama.log).read_text()
    assert xl.status == "installed" and all(c["ok"] for c in xl.verify)
    assert not receipt.ok
    assert read_receipt(receipt_path(tmp_path)).backend("llama-cpp-python").status == "failed"


@pytest.mark.slow
def test_unreachable_index_without_the_variant_fails_naming_it(tmp_path):
    receipt = _install(cpu_plan(("xllamacpp",), variant="cu126"), tmp_path)
    xl = receipt.backend("xllamacpp")
    assert xl.status == "failed"
    assert "variant 'cu126'" in xl.reason
    # Nothing half-installed: the environment has no torch of another variant.
    assert not any(p.startswith("torch==") for p in receipt.environment("main").packages)
