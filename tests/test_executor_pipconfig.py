"""pip's index configuration, read as pip reads it, and the flags uv and pip get from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from provision.install.executor import Installer
from provision.install.pipconfig import IndexConfig, read_index_config

FIX = Path(__file__).parent / "fixtures" / "install"


def _home_with_this_machines_config(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """This machine's real pip.conf files (copied into fixtures) laid out where pip looks."""
    xdg = tmp_path / "etc-xdg"
    (xdg / "pip").mkdir(parents=True)
    (xdg / "pip" / "pip.conf").write_text((FIX / "etc-xdg-pip.conf").read_text())
    home = tmp_path / "home"
    (home / ".config" / "pip").mkdir(parents=True)
    (home / ".config" / "pip" / "pip.conf").write_text((FIX / "user-pip.conf").read_text())
    return {"XDG_CONFIG_DIRS": str(xdg)}, home


def test_reads_this_machines_files_like_pip(tmp_path):
    environ, home = _home_with_this_machines_config(tmp_path)
    cfg = read_index_config(environ, prefix=str(tmp_path / "no-site"), home=home)
    assert cfg.find_links == ("/opt/wheels",)
    assert cfg.extra_index_urls == ("file:///opt/pypi/simple", "file:///opt/pypi-more/simple")
    assert cfg.constraints == ("/etc/xdg/pip/constraints.txt",)
    flags = cfg.uv_flags()
    assert flags[flags.index("--find-links") + 1] == "/opt/wheels"
    indexes = [flags[i + 1] for i, f in enumerate(flags) if f == "--index"]
    # PyPI (pip's default index) first: a mirror's pure-Python wheel must not shadow its
    # manylinux wheels for the same version (uv reads only the first index carrying a version).
    assert indexes == ["https://pypi.org/simple", "file:///opt/pypi/simple", "file:///opt/pypi-more/simple"]
    assert flags[flags.index("--constraint") + 1] == "/etc/xdg/pip/constraints.txt"
    # pip merges every source; uv only does with this strategy.
    assert flags[-2:] == ["--index-strategy", "unsafe-best-match"]


def test_environment_variables_override_files_and_uv_variables_win_over_pip(tmp_path):
    environ, home = _home_with_this_machines_config(tmp_path)
    environ.update(PIP_INDEX_URL="https://mirror.example/simple", PIP_FIND_LINKS="/a /b", UV_FIND_LINKS="/uv")
    cfg = read_index_config(environ, prefix=str(tmp_path), home=home)
    assert cfg.index_url == "https://mirror.example/simple"
    assert cfg.find_links == ("/a", "/b")
    flags = cfg.uv_flags()
    assert "--find-links" not in flags  # the user told uv directly
    assert flags[flags.index("--index") + 1] == "https://mirror.example/simple"
    assert flags[flags.index("--default-index") + 1] == "https://mirror.example/simple"


def test_pip_config_file_devnull_switches_files_off(tmp_path):
    environ, home = _home_with_this_machines_config(tmp_path)
    environ["PIP_CONFIG_FILE"] = "/dev/null"
    assert read_index_config(environ, prefix=str(tmp_path), home=home) == IndexConfig()


def test_install_section_overrides_global(tmp_path):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://a/simple\n[install]\nindex_url = https://b/simple\n")
    cfg = read_index_config(
        {"PIP_CONFIG_FILE": str(conf), "XDG_CONFIG_DIRS": str(tmp_path / "none")},
        prefix=str(tmp_path),
        home=tmp_path,
    )
    assert cfg.index_url == "https://b/simple"


def test_agrees_with_pip_itself_on_this_machine():
    """The real `pip config list` here and our reader name the same sources."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    cfg = read_index_config()
    for link in cfg.find_links:
        assert link in out
    for url in cfg.extra_index_urls:
        assert url in out
    if "find-links" in out:
        assert cfg.find_links


def test_pip_gets_our_flags_without_losing_its_own_sources():
    cfg = IndexConfig(extra_index_urls=("file:///opt/pypi/simple",), find_links=("/opt/wheels",))
    cfg = cfg.with_cli(None, ("/my/wheels",))
    argv = Installer("pip", cfg).install_argv(
        Path("/env/bin/python"),
        ["torch==2.13.0+cpu"],
        extra_index_urls=("https://download.pytorch.org/whl/cpu",),
    )
    # On pip's command line these options replace the configured ones, so all are passed.
    assert argv[argv.index("--find-links") + 1] == "/my/wheels"
    assert "/opt/wheels" in argv
    extras = [argv[i + 1] for i, a in enumerate(argv) if a == "--extra-index-url"]
    assert extras == ["https://download.pytorch.org/whl/cpu", "file:///opt/pypi/simple"]
    assert argv[-1] == "torch==2.13.0+cpu"


def test_uv_build_takes_build_constraints():
    cfg = IndexConfig(constraints=("/etc/c.txt",))
    flags = Installer("uv", cfg).build_flags()
    assert flags == ["--build-constraint", "/etc/c.txt"]
