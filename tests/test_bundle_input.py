"""Bundles: bad input (one line, exit 2, nothing touched) and the pure pieces, without the network."""

from __future__ import annotations

import io
import json
import os
import platform
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from provision.bundle.lock import files_from_pylock, sdist_build_requires, sdist_requires
from provision.bundle.make import check_out_dir
from provision.bundle.manifest import Manifest, Target, entry_for, write_manifest
from provision.bundle.offline_install import fit_problem, offline_environment
from provision.errors import UserError
from tests.support.cli import REPO, cli

H100 = REPO / "tests" / "profiles" / "linux-h100-driver590.json"


def _here() -> Target:
    glibc = (os.confstr("CS_GNU_LIBC_VERSION") or "glibc 2.17").split()[1].split(".")
    arch = platform.machine().lower()
    return Target(
        platform=f"{arch}-manylinux_{glibc[0]}_{glibc[1]}",
        python=f"{sys.version_info[0]}.{sys.version_info[1]}",
        system="linux",
        arch="aarch64" if arch == "arm64" else arch,
    )


def _plan_dict() -> dict:
    done = cli("plan", "--backend", "transformers", "--profile", str(H100), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def plan_dict() -> dict:
    return _plan_dict()


def _bundle(root: Path, plan: dict, **changes) -> Path:
    """A bundle with no files (so only the manifest's own fields are judged)."""
    root.mkdir(parents=True, exist_ok=True)
    m = Manifest(tool_version="0.1.0", target=_here(), plan=plan, files=[])
    m = replace(m, **{k: v for k, v in changes.items() if k in ("target", "tool_version")})
    write_manifest(root, m)
    if "format" in changes:
        d = json.loads((root / "MANIFEST.json").read_text())
        d["format"] = changes["format"]
        (root / "MANIFEST.json").write_text(json.dumps(d))
    return root


def _fails(done, code: int, *words: str) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- bundle -o


def test_output_dir_not_empty_and_not_a_bundle(tmp_path):
    out = tmp_path / "stuff"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    done = cli("bundle", "-o", str(out), "--backend", "transformers", "--profile", str(H100))
    _fails(done, 2, "not empty", "not a bundle")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_output_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    _fails(cli("bundle", "-o", str(f), "--backend", "transformers", "--profile", str(H100)), 2, "is a file")


def test_output_holds_a_bundle_for_another_target(tmp_path, plan_dict):
    out = _bundle(
        tmp_path / "b", plan_dict, target=Target("aarch64-manylinux_2_35", "3.12", "linux", "aarch64")
    )
    done = cli("bundle", "-o", str(out), "--backend", "transformers", "--profile", str(H100))
    _fails(done, 2, "aarch64-manylinux_2_35", "Python 3.12", "x86_64-manylinux_2_35")


# ---------------------------------------------------------------- install --from-bundle


def test_from_bundle_no_manifest(tmp_path):
    (tmp_path / "b").mkdir()
    done = cli("install", "--from-bundle", str(tmp_path / "b"), "--venv", str(tmp_path / "envs"))
    _fails(done, 2, "no MANIFEST.json")
    assert not (tmp_path / "envs").exists()


def test_from_bundle_for_another_platform(tmp_path, plan_dict):
    other = Target("aarch64-manylinux_2_35", _here().python, "linux", "aarch64")
    if _here().arch == "aarch64":
        other = Target("x86_64-manylinux_2_35", _here().python, "linux", "x86_64")
    b = _bundle(tmp_path / "b", plan_dict, target=other)
    done = cli("install", "--from-bundle", str(b), "--venv", str(tmp_path / "envs"))
    _fails(done, 2, "another platform", other.platform)
    assert not (tmp_path / "envs").exists()


def test_from_bundle_for_another_python(tmp_path, plan_dict):
    other_py = "3.12" if _here().python != "3.12" else "3.11"
    b = _bundle(tmp_path / "b", plan_dict, target=replace(_here(), python=other_py))
    done = cli("install", "--from-bundle", str(b), "--venv", str(tmp_path / "envs"))
    _fails(done, 2, "another Python", f"Python {other_py}", f"Python {_here().python}")
    assert not (tmp_path / "envs").exists()


def test_from_bundle_made_by_a_newer_tool(tmp_path, plan_dict):
    b = _bundle(tmp_path / "b", plan_dict, tool_version="99.0")
    done = cli("install", "--from-bundle", str(b), "--venv", str(tmp_path / "envs"))
    _fails(done, 2, "99.0", "newer")


def test_from_bundle_newer_manifest_format(tmp_path, plan_dict):
    b = _bundle(tmp_path / "b", plan_dict, format=7)
    _fails(cli("install", "--from-bundle", str(b)), 2, "format 7")


def test_from_bundle_takes_no_plan_flags(tmp_path, plan_dict):
    b = _bundle(tmp_path / "b", plan_dict)
    _fails(cli("install", "--from-bundle", str(b), "--auto"), 2, "--auto")


# ---------------------------------------------------------------- pure pieces


def _bundle_with_a_wheel(root: Path, plan: dict, listed_path: str = "wheels/demo_pkg-1.0-py3-none-any.whl"):
    """A bundle for this machine listing one (fake) wheel; listed_path may be made to point out."""
    root.mkdir(parents=True, exist_ok=True)
    wheel = root / "wheels" / "demo_pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir(exist_ok=True)
    wheel.write_bytes(b"a wheel's bytes")
    entry = replace(entry_for(root, wheel, "wheel"), path=listed_path)
    write_manifest(root, Manifest(tool_version="0.1.0", target=_here(), plan=plan, files=[entry]))
    return root


@pytest.mark.parametrize(
    "listed, why",
    [
        ("wheels/../../outside.whl", "leaves the bundle"),
        ("/etc/passwd", "not a relative path"),
        ("../outside.whl", "leaves the bundle"),
        ("MANIFEST.json", "not under wheels/"),
    ],
)
def test_from_bundle_refuses_a_listed_path_outside_it(tmp_path, plan_dict, listed, why):
    b = _bundle_with_a_wheel(tmp_path / "b", plan_dict, listed)
    (tmp_path / "outside.whl").write_bytes(b"a wheel's bytes")  # the bytes match: only the path is wrong
    done = cli("install", "--from-bundle", str(b), "--venv", str(tmp_path / "envs"))
    _fails(done, 2, repr(listed), why)
    assert not (tmp_path / "envs").exists()


def test_from_bundle_refuses_unlisted_files_and_symlinks(tmp_path, plan_dict):
    b = _bundle_with_a_wheel(tmp_path / "b", plan_dict)
    extra = b / "wheels" / "demo_pkg-1.0-1-py3-none-any.whl"
    extra.write_bytes(b"ranks above the listed one")
    done = cli("install", "--from-bundle", str(b), "--venv", str(tmp_path / "envs"))
    _fails(done, 2, "does not list", "wheels/demo_pkg-1.0-1-py3-none-any.whl")
    extra.unlink()
    listed = b / "wheels" / "demo_pkg-1.0-py3-none-any.whl"
    real = tmp_path / "real.whl"
    listed.rename(real)
    listed.symlink_to(real)  # the same bytes, so the hash would pass
    done = cli("install", "--from-bundle", str(b), "--venv", str(tmp_path / "envs"))
    _fails(done, 2, "symlinks", "wheels/demo_pkg-1.0-py3-none-any.whl")
    assert not (tmp_path / "envs").exists()


def test_sha256sums_is_what_sha256sum_checks(tmp_path, plan_dict):
    import subprocess

    b = _bundle_with_a_wheel(tmp_path / "b", plan_dict)
    lines = (b / "SHA256SUMS").read_text().splitlines()
    assert [ln.split("  ")[1] for ln in lines] == ["wheels/demo_pkg-1.0-py3-none-any.whl", "MANIFEST.json"]
    ok = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=b, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (b / "wheels" / "demo_pkg-1.0-py3-none-any.whl").write_bytes(b"other bytes")
    bad = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=b, capture_output=True, text=True)
    assert bad.returncode == 1 and "demo_pkg-1.0-py3-none-any.whl: FAILED" in bad.stdout


def test_fit_problem():
    t = Target("x86_64-manylinux_2_35", "3.11", "linux", "x86_64")
    assert fit_problem(t, "linux", "x86_64", (2, 36), "3.11") is None
    assert "glibc 2.35" in fit_problem(t, "linux", "x86_64", (2, 31), "3.11")
    assert "another platform" in fit_problem(t, "linux", "aarch64", (2, 36), "3.11")
    assert "another Python" in fit_problem(t, "linux", "x86_64", (2, 36), "3.12")
    assert (
        fit_problem(
            replace(t, arch="aarch64", platform="aarch64-manylinux_2_35"), "linux", "arm64", (2, 35), "3.11"
        )
        is None
    )


def _sdist(tmp_path: Path, files: dict[str, str]) -> Path:
    path = tmp_path / "demo-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"demo-1.0/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_sdist_requires_applies_only_requested_extras(tmp_path):
    pkg_info = (
        "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"
        "Requires-Dist: numpy>=1.20\n"
        'Requires-Dist: uvicorn>=0.22; extra == "server"\n'
        'Requires-Dist: pytest; extra == "test"\n'
        'Requires-Dist: tomli; python_version < "3.11"\n'
    )
    s = _sdist(tmp_path, {"PKG-INFO": pkg_info})
    assert sdist_requires(s, ("server",)) == [
        "numpy>=1.20",
        "uvicorn>=0.22",
        'tomli; python_version < "3.11"',
    ]
    assert sdist_requires(s, ()) == ["numpy>=1.20", 'tomli; python_version < "3.11"']


def test_sdist_build_requires(tmp_path):
    with_pyproject = _sdist(
        tmp_path, {"pyproject.toml": '[build-system]\nrequires = ["scikit-build-core>=0.9"]\n'}
    )
    assert sdist_build_requires(with_pyproject, ["setuptools"]) == ["scikit-build-core>=0.9"]
    (tmp_path / "x").mkdir()
    legacy = _sdist(tmp_path / "x", {"setup.py": "from setuptools import setup; setup()"})
    assert sdist_build_requires(legacy, ["setuptools>=40.8.0", "wheel"]) == ["setuptools>=40.8.0", "wheel"]


def test_files_from_pylock_takes_the_newest_fitting_wheel_else_the_sdist():
    h = {"sha256": "0" * 64}
    data = {
        "packages": [
            {
                "name": "Numpy",
                "version": "2.0",
                "sdist": {"url": "https://x/numpy-2.0.tar.gz", "size": 9, "hashes": h},
                "wheels": [
                    {
                        "url": "https://x/numpy-2.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                        "size": 1,
                        "hashes": h,
                    },
                    {
                        "url": "https://x/numpy-2.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                        "size": 2,
                        "hashes": h,
                    },
                ],
            },
            {
                "name": "fvcore",
                "version": "0.1",
                "sdist": {"url": "https://x/fvcore-0.1.tar.gz", "hashes": h},
            },
            {
                "name": "torch",
                "version": "2.13.0+cpu",
                "wheels": [{"url": "file:///w/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl", "hashes": h}],
            },
        ]
    }
    files = {f.project: f for f in files_from_pylock(data)}
    assert files["numpy"].filename.endswith("manylinux_2_28_x86_64.whl") and files["numpy"].size == 2
    assert files["fvcore"].kind == "sdist" and files["fvcore"].size is None
    assert files["torch"].filename == "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"


def test_check_out_dir(tmp_path, plan_dict):
    t = _here()
    check_out_dir(tmp_path / "new", t)
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty", t)
    half = tmp_path / "half"
    half.mkdir()
    (half / ".xinfer-bundle-partial").write_text("")
    (half / "wheels").mkdir()
    check_out_dir(half, t)  # an interrupted run resumes
    with pytest.raises(UserError, match="not empty"):
        (tmp_path / "empty" / "x").write_text("")
        check_out_dir(tmp_path / "empty", t)


def test_offline_environment_restores_the_callers(tmp_path):
    env = {"UV_INDEX_URL": "https://mirror", "PIP_CONFIG_FILE": "/etc/mine.conf"}
    with offline_environment(tmp_path, env):
        assert env["UV_OFFLINE"] == "1" and env["PIP_NO_INDEX"] == "1"
        assert "UV_INDEX_URL" not in env and env["PIP_FIND_LINKS"] == str(tmp_path)
    assert env == {"UV_INDEX_URL": "https://mirror", "PIP_CONFIG_FILE": "/etc/mine.conf"}


def test_xinference_offline_env(tmp_path):
    import subprocess

    from provision.bundle.xinference_env import write_simple_index, xinference_offline_env

    bundle = tmp_path / "bundle"
    (bundle / "wheels").mkdir(parents=True)
    (bundle / "wheels" / "demo_pkg-1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
    pages = write_simple_index(bundle)
    page = (bundle / "simple" / "demo-pkg" / "index.html").read_text()
    assert "../../wheels/demo_pkg-1.0-py3-none-any.whl#sha256=" in page and len(pages) == 2
    files = [entry_for(bundle, f, "wheel") for f in sorted(bundle.rglob("*")) if f.is_file()]
    write_manifest(bundle, Manifest(tool_version="0.1.0", target=_here(), plan={}, files=files))

    # A parent with pip (this interpreter): Xinference's strict offline mode, its pip.conf as pip reads it.
    env = xinference_offline_env(bundle, tmp_path / "conf", sys.executable)
    assert env["XINFERENCE_VIRTUAL_ENV_OFFLINE_INSTALL"] == "1"
    assert env["UV_OFFLINE"] == "1" and env["UV_FIND_LINKS"] == str(bundle / "wheels")
    assert env["XINFERENCE_VIRTUAL_ENV_FIND_LINKS_ALLOWED_ROOTS"] == str(bundle / "wheels")
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_CONFIG_FILE": env["PIP_CONFIG_FILE"]},
    ).stdout
    assert f"global.index-url='{(bundle / 'simple').as_uri()}/'" in listed, listed
    assert "global.extra-index-url=''" in listed, listed  # the site's own mirrors blanked

    # A parent made by uv (no pip): Xinference could read no index_url, so no strict mode.
    from provision.install.executor import uv_bin

    venv = tmp_path / "nopip"
    subprocess.run([uv_bin(), "venv", "--python", sys.executable, str(venv)], check=True, capture_output=True)
    env = xinference_offline_env(bundle, tmp_path / "conf2", venv / "bin" / "python")
    assert "XINFERENCE_VIRTUAL_ENV_OFFLINE_INSTALL" not in env and env["UV_OFFLINE"] == "1"

    # uv takes any wheel in UV_FIND_LINKS: a bundle with one its manifest does not list is refused.
    (bundle / "wheels" / "demo_pkg-1.0-1-py3-none-any.whl").write_bytes(b"another wheel")
    with pytest.raises(UserError, match="does not list: wheels/demo_pkg-1.0-1-py3-none-any.whl"):
        xinference_offline_env(bundle, tmp_path / "conf3")
