"""Running the real CLI from a test, and the test secrets no output may contain."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Secrets the tests hand the CLI (in URLs, keys, env). No output of any CLI run may contain one:
# `cli()` checks every run's stdout and stderr, so the whole suite greps its own outputs.
TEST_SECRETS = ("s3cret-pw-4711", "tok3n-0815-xyz", "hf_test_token_2718")


def assert_no_secret(text: str, where: str) -> None:
    leaked = [s for s in TEST_SECRETS if s in text]
    assert not leaked, f"{where} contains the test secret(s) {leaked}"


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 1800, **kw
) -> subprocess.CompletedProcess:
    """Run the real `xinfer-setup` entry point of this checkout in a subprocess."""
    done = subprocess.run(
        [sys.executable, "-m", "provision", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=kw.pop("cwd", REPO),
        **kw,
    )
    assert_no_secret(done.stdout or "", f"stdout of xinfer-setup {' '.join(args)[:80]}")
    assert_no_secret(done.stderr or "", f"stderr of xinfer-setup {' '.join(args)[:80]}")
    return done
