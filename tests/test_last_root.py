"""After `install --venv ROOT`, a command run without --venv that finds nothing installed says
that --venv is probably missing and names ROOT, instead of only "run xinfer-setup install"."""

from __future__ import annotations

from pathlib import Path

from provision.install import last_root
from provision.install.receipt import BackendRecord, EnvRecord, Receipt, write_receipt
from tests.support.cli import cli


def _installed_xinference_under(root: Path) -> None:
    """The receipt an install under ROOT leaves (what the hint checks is still there)."""
    main = root / "main"
    write_receipt(
        Receipt(
            profile={},
            plan={},
            installer="uv",
            environments=[EnvRecord("main", str(main), str(main / "bin" / "python"))],
            backends=[BackendRecord("xinference", "installed", "main", "4.1.0", ["xinference==4.1.0"])],
        ),
        main,
    )


def _one_line(done) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_serve_and_verify_without_venv_name_the_root_of_the_last_install(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    root = tmp_path / "envs"
    # sglang cannot run on this CPU host: the install stops before any download, root remembered.
    done = cli("install", "--backend", "sglang", "--venv", str(root), env=env)
    assert done.returncode == 1, done.stderr
    assert (tmp_path / "state" / "xinfer-setup" / "last-root").read_text() == str(root)
    _installed_xinference_under(root)
    missing = f"--venv is probably missing: the last install was under --venv {root}"

    line = _one_line(cli("serve", "qwen2.5-instruct", "--size", "7", "--dry-run", env=env))
    assert "no installed Xinference to look up built-in names in" in line
    assert line.endswith(f"run `xinfer-setup install --backend xinference`; {missing}")

    line = _one_line(cli("verify", env=env))
    assert line.endswith(f"run `xinfer-setup install` first ({missing})")

    line = _one_line(cli("smoke", env=env))
    assert line.endswith(f"no engine is installed here; run `xinfer-setup install` first; {missing}")


def test_no_note_with_venv_after_an_install_without_it_or_once_the_root_is_gone(tmp_path):
    environ = {"XDG_STATE_HOME": str(tmp_path / "state")}
    root = tmp_path / "envs"
    last_root.remember(root, environ)
    assert last_root.recall(environ) is None  # nothing installed there (yet): nothing to point at
    _installed_xinference_under(root)
    assert last_root.recall(environ) == root
    assert last_root.missing_venv_note(root, environ) == ""  # --venv given: it is not missing
    assert last_root.missing_venv_note(tmp_path / "other", environ) == ""
    last_root.remember(None, environ)  # the last install went to this interpreter's environment
    assert last_root.recall(environ) is None and last_root.missing_venv_note(None, environ) == ""


def test_an_unwritable_state_directory_costs_the_hint_not_the_install(tmp_path):
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory would be")
    environ = {"XDG_STATE_HOME": str(blocker)}
    last_root.remember(tmp_path / "envs", environ)  # no exception
    assert last_root.recall(environ) is None
