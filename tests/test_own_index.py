"""Class 20: a backend planned from its own index replaces a same-version copy from elsewhere.

Real uv, a real venv and a real simple index on 127.0.0.1. The two xllamacpp wheels are small
stand-ins with the real name and version (the GPU build cannot run here): one says "pypi-cpu",
the one on the planned GPU index says "gpu-index". Only the planned index's copy may remain.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import subprocess
import zipfile
from pathlib import Path

from provision.install.executor import uv_bin
from provision.install.own_index import must_reinstall_from_own_index
from provision.install.pipconfig import IndexConfig
from provision.install.run import InstallOptions, install_plan
from provision.plan import BackendDecision, PlanRequest
from provision.planner import load_recipes, make_plan
from provision.profile import load_profile
from tests.test_pin_check import served

PROFILES = Path(__file__).parent / "profiles"


def _wheel(out: Path, version: str, build: str) -> Path:
    """A minimal valid wheel of xllamacpp whose module says which build it is."""
    name = f"xllamacpp-{version}-py3-none-any.whl"
    info = f"xllamacpp-{version}.dist-info"
    files = {
        "xllamacpp/__init__.py": f'BUILD = "{build}"\n'.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: xllamacpp\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"xllamacpp-{version}.dist-info/RECORD,,")
    files[f"xllamacpp-{version}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out / name, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return out / name


def test_the_rule_is_pure_and_follows_the_previous_plan():
    gpu = BackendDecision(
        "xllamacpp", "install", "", ("xllamacpp==1",), extra_index_urls=("http://gpu/cu128",)
    )
    assert not must_reinstall_from_own_index(gpu, installed=False, previous_plan=None)
    assert must_reinstall_from_own_index(gpu, installed=True, previous_plan=None)
    same = {
        "backends": [{"name": "xllamacpp", "action": "install", "extra_index_urls": ["http://gpu/cu128"]}]
    }
    cpu = {"backends": [{"name": "xllamacpp", "action": "install", "extra_index_urls": []}]}
    assert not must_reinstall_from_own_index(gpu, True, same)
    assert must_reinstall_from_own_index(gpu, True, cpu)
    assert not must_reinstall_from_own_index(dataclasses.replace(gpu, extra_index_urls=()), True, None)


def test_a_cpu_copy_of_the_same_version_is_replaced_by_the_gpu_index_wheel(tmp_path):
    profile = load_profile(PROFILES / "linux-h100-driver590.json")
    profile = dataclasses.replace(profile, python=dataclasses.replace(profile.python, version="3.12.3"))
    plan = make_plan(profile, PlanRequest(backends=("xllamacpp",)), load_recipes())
    xl = plan.backend("xllamacpp")
    version = xl.version
    gpu_root = tmp_path / "gpu-index"
    wheel = _wheel(gpu_root / "files", version, "gpu-index")
    (gpu_root / "simple" / "xllamacpp").mkdir(parents=True)
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (gpu_root / "simple" / "xllamacpp" / "index.html").write_text(
        f'<a href="../../files/{wheel.name}#sha256={sha}">{wheel.name}</a>\n'
    )
    cpu_dir = tmp_path / "pypi-cpu"
    _wheel(cpu_dir, version, "pypi-cpu")
    root = tmp_path / "root"
    with served(gpu_root) as url:
        plan = dataclasses.replace(
            plan,
            backends=tuple(
                dataclasses.replace(b, extra_index_urls=(url,)) if b.name == "xllamacpp" else b
                for b in plan.backends
            ),
        )
        # The CPU copy first, as a plain `pip install xllamacpp` from PyPI would leave it.
        first = dataclasses.replace(
            plan,
            backends=tuple(dataclasses.replace(b, extra_index_urls=()) for b in plan.backends),
        )
        install_plan(
            first,
            root,
            options=InstallOptions(
                index=IndexConfig(no_index=True, find_links=(str(cpu_dir),)), check_disk=False
            ),
        )
        python = next(root.glob("*/bin/python"))
        said = subprocess.run(
            [str(python), "-c", "import xllamacpp; print(xllamacpp.BUILD)"], capture_output=True, text=True
        )
        assert said.stdout.strip() == "pypi-cpu"
        install_plan(plan, root, options=InstallOptions(index=IndexConfig(index_url=url), check_disk=False))
    said = subprocess.run(
        [str(python), "-c", "import xllamacpp; print(xllamacpp.BUILD)"], capture_output=True, text=True
    )
    assert said.stdout.strip() == "gpu-index"
    assert uv_bin() is not None
