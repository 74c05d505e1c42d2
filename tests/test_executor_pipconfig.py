"""pip's index configuration as pip itself sees it, and the flags uv and pip get from it.

The reference is pip: each layout below is written to disk and both pip (`pip config list`,
the real one in this environment) and our no-pip reader are asked; they must agree, and the
layouts are built so that there is always something to compare.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from pathlib import Path

import pytest

from provision.install.executor import Installer
from provision.install.pipconfig import (
    IndexConfig,
    ask_pip,
    effective,
    from_settings,
    read_files,
    read_index_config,
)

FIX = Path(__file__).parent / "fixtures" / "install"
REPO = Path(__file__).resolve().parents[1]


def _layout(tmp_path: Path, files: dict[str, str], env: dict[str, str] | None = None):
    """Config files at pip's places under tmp_path; returns (environ, home)."""
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    places = {
        "xdg": tmp_path / "etc-xdg" / "pip" / "pip.conf",
        "legacy-user": home / ".pip" / "pip.conf",
        "user": home / ".config" / "pip" / "pip.conf",
        "env-file": tmp_path / "env-pip.conf",
    }
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "XDG_CONFIG"))}
    environ["XDG_CONFIG_DIRS"] = str(tmp_path / "etc-xdg")
    for where, text in files.items():
        places[where].parent.mkdir(parents=True, exist_ok=True)
        places[where].write_text(text)
    if "env-file" in files:
        environ["PIP_CONFIG_FILE"] = str(places["env-file"])
    environ.update(env or {})
    return environ, home


def _both(tmp_path, files, env=None):
    environ, home = _layout(tmp_path, files, env)
    pip = ask_pip(sys.executable, environ, sys.prefix, home, cache=None)
    assert pip is not None, "pip config list failed"
    ours = read_files(environ, sys.prefix, home)
    return effective(pip), effective(ours)


LAYOUTS = {
    "this machine": {
        "xdg": (FIX / "etc-xdg-pip.conf").read_text(),
        "user": (FIX / "user-pip.conf").read_text(),
    },
    # pip applies [install] of any file over [global] of any file, not per file.
    "install section of an earlier file beats a later global": {
        "xdg": "[install]\nindex-url = https://a.example/simple\n",
        "user": "[global]\nindex-url = https://b.example/simple\n",
    },
    # PIP_CONFIG_FILE naming an existing file switches the user files off.
    "config file env skips user config": {
        "user": "[global]\nextra-index-url = https://user.example/simple\n",
        "env-file": "[global]\nfind-links = /env/wheels\n",
    },
    "legacy then xdg user file": {
        "legacy-user": "[global]\ntimeout = 5\nproxy = http://legacy:3128\n",
        "user": "[global]\nproxy = http://proxy.example:3128\n",
    },
    "cert, client cert, trusted hosts, underscores": {
        # (this machine's /etc/pip.conf sets cert, and loads after the XDG file: the user file wins)
        "xdg": "[global]\ntrusted-host = mirror.example other.example\n",
        "user": "[global]\ncert = /etc/ca.pem\nclient_cert = /etc/me.pem\n"
        "[install]\nno_index = yes\nfind_links = /w1 /w2\n",
    },
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_agrees_with_pip_itself(tmp_path, name):
    pip, ours = _both(tmp_path, LAYOUTS[name])
    assert pip, f"{name}: pip reports nothing, so this layout tests nothing"
    assert ours == pip


def test_variables_override_files_like_pip(tmp_path):
    pip, ours = _both(
        tmp_path,
        LAYOUTS["this machine"],
        {
            "PIP_INDEX_URL": "https://mirror.example/simple",
            "PIP_FIND_LINKS": "/a /b",
            "PIP_TRUSTED_HOST": "m",
        },
    )
    assert (
        ours == pip and pip["index-url"] == "https://mirror.example/simple" and pip["find-links"] == "/a /b"
    )


def test_the_semantics_the_old_reader_got_wrong(tmp_path):
    pip, _ = _both(tmp_path, LAYOUTS["install section of an earlier file beats a later global"])
    assert pip["index-url"] == "https://a.example/simple"
    pip, _ = _both(tmp_path / "2", LAYOUTS["config file env skips user config"])
    assert "extra-index-url" not in pip and pip["find-links"] == "/env/wheels"
    pip, _ = _both(tmp_path / "3", LAYOUTS["cert, client cert, trusted hosts, underscores"])
    cfg = from_settings(pip, {})
    assert (cfg.cert, cfg.client_cert, cfg.trusted_hosts) == (
        "/etc/ca.pem",
        "/etc/me.pem",
        ("mirror.example", "other.example"),
    )


def test_devnull_switches_every_file_off(tmp_path):
    environ, home = _layout(tmp_path, LAYOUTS["this machine"], {"PIP_CONFIG_FILE": os.devnull})
    assert effective(read_files(environ, sys.prefix, home)) == {}
    pip = effective(ask_pip(sys.executable, environ, sys.prefix, home, cache=None) or {})
    assert pip == {} or set(pip) <= {"cert"}  # /etc/pip.conf is a file too: devnull hides it as well


def test_this_machine_gives_uv_pypi_first_and_never_pooling(tmp_path):
    environ, home = _layout(tmp_path, LAYOUTS["this machine"])
    cfg = read_index_config(environ, sys.prefix, home, cache=tmp_path / "cache")
    assert cfg.find_links == ("/opt/wheels",)
    assert cfg.extra_index_urls == ("file:///opt/pypi/simple", "file:///opt/pypi-more/simple")
    assert cfg.constraints == ("/etc/xdg/pip/constraints.txt",)
    flags = cfg.uv_flags(first=("https://download.pytorch.org/whl/cpu",))
    indexes = [flags[i + 1] for i, f in enumerate(flags) if f == "--index"]
    # The planned torch index first; then PyPI, pip's default: a mirror's pure-Python soundfile
    # wheel must not shadow PyPI's manylinux wheels for the same version.
    assert indexes == [
        "https://download.pytorch.org/whl/cpu",
        "https://pypi.org/simple",
        "file:///opt/pypi/simple",
        "file:///opt/pypi-more/simple",
    ]
    assert "--index-strategy" not in flags


def test_uv_gets_cert_proxy_and_trusted_hosts(tmp_path):
    cfg = from_settings(
        {"cert": "/etc/ca.pem", "client-cert": "/c.pem", "proxy": "http://p:3128", "trusted-host": "a b"}, {}
    )
    flags = cfg.uv_flags()
    assert [flags[i + 1] for i, f in enumerate(flags) if f == "--allow-insecure-host"] == ["a", "b"]
    assert cfg.uv_env() == {
        "SSL_CERT_FILE": "/etc/ca.pem",
        "SSL_CLIENT_CERT": "/c.pem",
        "HTTPS_PROXY": "http://p:3128",
        "HTTP_PROXY": "http://p:3128",
    }
    # What the user already told uv stays theirs.
    owned = from_settings({"cert": "/etc/ca.pem"}, {"SSL_CERT_FILE": "/mine.pem"})
    assert owned.uv_env() == {}


def test_answer_is_cached_by_mtime_and_credentials_are_never_cached(tmp_path):
    cache = tmp_path / "cache"
    environ, home = _layout(tmp_path, {"user": "[global]\nextra-index-url = https://x.example/simple\n"})
    read_index_config(environ, sys.prefix, home, cache=cache)
    cached = list(cache.glob("pip-config-*.json"))
    assert len(cached) == 1
    read_index_config(environ, sys.prefix, home, cache=cache)
    assert list(cache.glob("pip-config-*.json")) == cached  # same files, same key
    conf = home / ".config" / "pip" / "pip.conf"
    conf.write_text("[global]\nextra-index-url = https://user:s3cret-pw-4711@x.example/simple\n")
    os.utime(conf, ns=(1, 1))
    cfg = read_index_config(environ, sys.prefix, home, cache=cache)
    assert cfg.extra_index_urls == ("https://user:s3cret-pw-4711@x.example/simple",)  # used...
    assert all("s3cret" not in p.read_text() for p in cache.iterdir())  # ...never stored
    assert len(list(cache.glob("pip-config-*.json"))) == 1


def test_pip_gets_our_flags_without_losing_its_own_sources():
    cfg = IndexConfig(extra_index_urls=("file:///opt/pypi/simple",), find_links=("/opt/wheels",))
    cfg = cfg.with_cli(None, ("/my/wheels",))
    argv = Installer("pip", cfg).install_argv(
        Path("/env/bin/python"), ["xllamacpp"], extra_index_urls=("https://xllamacpp.example/cu128",)
    )
    # On pip's command line these options replace the configured ones, so all are passed.
    assert argv[argv.index("--find-links") + 1] == "/my/wheels"
    assert "/opt/wheels" in argv
    extras = [argv[i + 1] for i, a in enumerate(argv) if a == "--extra-index-url"]
    assert extras == ["https://xllamacpp.example/cu128", "file:///opt/pypi/simple"]
    # The torch step with pip: the planned index alone (pip can only pool indexes).
    torch = Installer("pip", cfg).install_argv(
        Path("/env/bin/python"), ["torch"], extra_index_urls=("https://t.example/whl/cpu",), exclusive=True
    )
    assert torch[torch.index("--index-url") + 1] == "https://t.example/whl/cpu"
    assert "--extra-index-url" not in torch and "/opt/wheels" in torch


def test_uv_build_takes_build_constraints():
    cfg = IndexConfig(constraints=("/etc/c.txt",))
    flags = Installer("uv", cfg).build_flags()
    assert flags == ["--build-constraint", "/etc/c.txt"]


def test_uv_is_never_asked_to_pool_indexes():
    """Every combination of sources, every uv command line: never --index-strategy unsafe-best-match."""
    options = [
        {"index_url": "https://m/simple"},
        {"extra_index_urls": ("https://e/simple",)},
        {"find_links": ("/w",)},
        {"no_index": True},
        {"trusted_hosts": ("h",)},
    ]
    for n in range(len(options) + 1):
        for combo in itertools.combinations(options, n):
            cfg = IndexConfig(**{k: v for o in combo for k, v in o.items()})
            inst = Installer("uv", cfg)
            for first in ((), ("https://download.pytorch.org/whl/cu130",)):
                argv = inst.install_argv(Path("/p"), ["x"], Path("/c"), first) + inst.build_flags()
                assert "unsafe-best-match" not in argv and "--index-strategy" not in argv
    # ...and nothing in the product can say it.
    hits = [
        p
        for p in (REPO / "provision").rglob("*.py")
        if re.search(r"unsafe-best-match\"|'unsafe", p.read_text())
    ]
    assert hits == []


def test_soundfile_comes_with_its_library_under_first_index(tmp_path):
    """Real uv, this machine's pip config: the mirror's pure-Python soundfile 0.14.0 (no bundled
    libsndfile; it breaks transformers' audio imports) must not win over PyPI's manylinux wheel."""
    import subprocess

    from provision.install.executor import uv_bin

    cfg = read_index_config()
    if not cfg.extra_index_urls:
        pytest.skip("no extra index configured here: nothing can shadow PyPI")
    inst = Installer("uv", cfg)
    venv = tmp_path / "v"
    assert subprocess.run(inst.venv_argv(venv), capture_output=True).returncode == 0
    python = venv / "bin" / "python"
    done = subprocess.run(inst.install_argv(python, ["soundfile==0.14.0"]), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--index-strategy" not in inst.install_argv(python, ["soundfile"])
    loaded = subprocess.run(
        [python, "-c", "import soundfile; print(soundfile.__libsndfile_version__)"],
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0, loaded.stderr[-500:]
    assert uv_bin()
