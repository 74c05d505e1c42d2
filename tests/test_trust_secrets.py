"""No secret is printed or stored; credentialed indexes work (issue: trust and faults)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from provision.install.index_pages import index_reachable, list_wheels
from provision.install.receipt import Receipt, write_receipt
from provision.install.torch_source import resolve_torch_source
from provision.redact import RedactingStream, drop_masked_credentials, redact, redact_obj
from tests.support.auth_index import auth_index
from tests.support.cli import TEST_SECRETS, assert_no_secret, cli

PW, TOKEN, HF = TEST_SECRETS
PROFILE = str(Path(__file__).parent / "profiles" / "linux-h100-driver590.json")


def test_redact_masks_url_userinfo_keys_bearer_and_env_tokens():
    env = {"HF_TOKEN": HF, "PATH": "/usr/bin", "UV_INDEX_MIRROR_PASSWORD": PW}
    text = (
        f"torch from https://user:{PW}@host/whl/cu130 and https://{TOKEN}@host2/simple; "
        f"serve --api-key {TOKEN} --api_key={TOKEN} Authorization: Bearer {TOKEN}; hub {HF}"
    )
    out = redact(text, env)
    for s in TEST_SECRETS:
        assert s not in out
    assert "https://user:****@host/whl/cu130" in out
    assert "https://****@host2/simple" in out
    assert "--api-key ****" in out and "Bearer ****" in out
    # Logins that are not secrets stay readable.
    assert redact("ssh://root@10.0.0.2:22/x", env) == "ssh://root@10.0.0.2:22/x"
    assert redact("/usr/bin and 1", env) == "/usr/bin and 1"


def test_setup_and_oauth_tokens_are_masked():
    # Xinference's first-run notice (api/restful_api.py, _log_setup_required_notice) and its /token reply.
    notice = "  FIRST-RUN SETUP REQUIRED\n  Setup token: Zq3-xY_9kLm0pQ\n  Create the initial admin account"
    assert redact(notice, {}) == notice.replace("Zq3-xY_9kLm0pQ", "****")
    reply = '{"access_token": "eyJ0.eXAi.sig", "refresh_token": "r-77aa", "token_type": "bearer"}'
    assert redact(reply, {}) == '{"access_token": "****", "refresh_token": "****", "token_type": "bearer"}'
    assert redact("tokens_per_s=183 and a token bucket", {}) == "tokens_per_s=183 and a token bucket"


@pytest.mark.slow
def test_xinference_setup_token_stays_out_of_its_log(engine_env, tmp_path):
    """Xinference with its advanced auth on (as serve --via xinference runs it off loopback) logs
    its first-run setup token; the log serve keeps holds it masked."""
    from provision.engines.server import free_port
    from provision.serve.xinference import (
        XinferenceServer,
        read_setup_token,
        xinference_command,
        xinference_env,
    )

    home, port = tmp_path / "home", free_port()
    server = XinferenceServer(
        xinference_command(engine_env["xinference"], "127.0.0.1", port),
        host="127.0.0.1",
        port=port,
        log_path=tmp_path / "xinference.log",
        env=xinference_env(home, auth=True),
        ready_timeout_s=300,
    )
    with server:
        token = read_setup_token(home)
    assert token and len(token) >= 8
    log = server.log_path.read_text(errors="replace")
    assert "Setup token: ****" in log, log[-3000:]
    assert token not in log


def test_a_secret_written_in_two_halves_is_redacted(monkeypatch):
    """The CLI's stdout/stderr redact by line: neither half of a key or token leaves, even with a
    flush between the halves (click flushes after every echo)."""
    import io

    monkeypatch.setenv("HF_TOKEN", HF)
    inner = io.StringIO()
    stream = RedactingStream(inner)
    for first, second in (
        (f"serve --api-key {TOKEN[:5]}", f"{TOKEN[5:]} ok\n"),
        (f"hub {HF[:4]}", f"{HF[4:]}\n"),
    ):
        stream.write(first)
        stream.flush()
        stream.write(second)
    stream.write(f"last words {HF}")  # no newline: it leaves at exit (drain), redacted too
    assert "last words" not in inner.getvalue()
    stream.drain()
    out = inner.getvalue()
    assert out == "serve --api-key **** ok\nhub ****\nlast words ****", out
    for secret in (TOKEN, HF):
        assert secret[:4] not in out and secret[-4:] not in out


def test_redact_obj_masks_values_of_secret_keys_and_every_string():
    obj = {"api_key": TOKEN, "env": {"HF_TOKEN": HF}, "urls": [f"http://u:{PW}@h/"], "n": 3}
    out = json.dumps(redact_obj(obj, {}))
    assert_no_secret(out, "redact_obj output")
    assert '"n": 3' in out


def test_replayed_plan_drops_the_mask_so_netrc_supplies_the_password():
    stored = redact_obj({"index_url": f"https://user:{PW}@host/whl/cpu", "x": f"https://{TOKEN}@h/s"})
    assert drop_masked_credentials(stored) == {"index_url": "https://user@host/whl/cpu", "x": "https://h/s"}


def test_plan_text_and_json_never_echo_the_torch_index_password():
    url = f"https://user:{PW}@mirror.example/whl"
    text = cli("plan", "--auto", "--profile", PROFILE, "--torch-index-url", url)
    assert text.returncode == 0, text.stderr
    assert "https://user:****@mirror.example/whl/cu130" in text.stdout  # still says which mirror
    as_json = cli("plan", "--auto", "--profile", PROFILE, "--torch-index-url", url, "--json")
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["torch"]["index_url"] == "https://user:****@mirror.example/whl/cu130"
    dry = cli(
        "install",
        "--auto",
        "--profile",
        PROFILE,
        "--dry-run",
        "--json",
        "--torch-index-url",
        url,
        env={"HF_TOKEN": HF},
    )
    assert dry.returncode == 0, dry.stderr
    # cli() itself fails the test if a secret is in stdout/stderr; say what was checked.
    assert "mirror.example" in dry.stdout


def test_bad_url_error_is_redacted_too():
    done = cli("plan", "--auto", "--profile", PROFILE, "--torch-index-url", f"ftp://u:{PW}@h/whl")
    assert done.returncode == 2
    assert done.stderr.startswith("xinfer-setup: ") and "ftp://u:****@h/whl" in done.stderr


def test_receipt_on_disk_holds_no_secret(tmp_path):
    receipt = Receipt(
        profile={},
        plan={"torch": {"index_url": f"https://user:{PW}@host/whl/cpu"}},
        installer="uv",
        environments=[],
        backends=[],
        notes=[f"from https://{TOKEN}@host/simple"],
    )
    path = write_receipt(receipt, tmp_path)
    assert_no_secret(path.read_text(), str(path))
    assert "https://user:****@host/whl/cpu" in path.read_text()


def _tiny_wheel(directory: Path, name: str) -> Path:
    """A file named like a torch wheel: the index lists names, nothing installs it."""
    path = directory / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("torch/__init__.py", "")
    return path


def test_credentialed_index_is_read_with_basic_auth_not_a_crash(tmp_path):
    """urllib used to raise http.client.InvalidURL on `user:pw@host`, a traceback out of install."""
    wheel = _tiny_wheel(tmp_path, "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    with auth_index([wheel], "user", PW) as (base, log):
        good = base.replace("http://", f"http://user:{PW}@")
        bad = base.replace("http://", "http://user:wrong@")
        assert index_reachable(good) is True
        assert index_reachable(bad) is False  # the server really checks: 401 without the password
        assert index_reachable(base) is False
        assert list_wheels((good,), "torch") == [wheel.name]
        src = resolve_torch_source("cpu", good, None, (), "cp311", "x86_64")
        assert src.torch_requirement == "torch==2.13.0+cpu"
        assert any(entry.endswith(" 401") for entry in log) and any(e.endswith(" 200") for e in log)
