"""One redaction for everything xinfer-setup prints, logs or stores.

What counts as a secret:
  - the password (or lone token) in a URL's userinfo: `https://user:s3cret@host/` ->
    `https://user:****@host/`, `https://tok3n@host/` -> `https://****@host/` (pip and uv take a
    lone userinfo as a token);
  - the value after `--api-key` / `--api_key` / `api_key=`, an HTTP `Bearer` token, and a
    setup, access or refresh token (`Setup token: ...`, `"access_token": "..."`);
  - the value of any environment variable whose name says it holds a secret (HF_TOKEN,
    *_PASSWORD, *_API_KEY, *_SECRET, ...) wherever that value turns up in text.
Every sink (stdout/stderr through the CLI, the receipt, plan JSON, build logs) goes through
`redact` or `redact_obj`; nothing is stored to undo it, so a replay gets credentials from the
user's own store (netrc, keyring, uv's UV_INDEX_* variables), never from our files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, TextIO

MASK = "****"

# scheme://[user[:password]@]host — userinfo ends at the last "@" before the host's "/".
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@'\"]+)@")
_FLAG_VALUE = re.compile(
    r"(?P<flag>--api[-_]key(?:=|\s+)|\bapi[-_]key\s*[=:]\s*['\"]?)(?P<value>[^\s'\",]+)", re.I
)
_BEARER = re.compile(r"(?P<flag>\bBearer\s+)(?P<value>[A-Za-z0-9._~+/=-]+)")
# Xinference logs its first-run "Setup token: ..." (api/restful_api.py); OAuth replies carry
# "access_token"/"refresh_token".
_TOKEN_VALUE = re.compile(
    r"(?P<flag>\b(?:setup|access|refresh)[ _-]?token['\"]?\s*[:=]\s*['\"]?)(?P<value>[^\s'\",]+)", re.I
)
_SECRET_VAR = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|APIKEY|ACCESS_KEY|CREDENTIALS?)$", re.I)
# Short values ("1", "yes") would redact ordinary words; real tokens are longer.
_MIN_SECRET_LEN = 6


def _mask_userinfo(m: re.Match[str]) -> str:
    userinfo = m.group("userinfo")
    if userinfo == MASK or userinfo.endswith(":" + MASK):
        return m.group(0)
    user, sep, _ = userinfo.partition(":")
    if sep:
        return f"{m.group('scheme')}{user}:{MASK}@"
    # pip and uv read a lone userinfo of an http(s) URL as a token; ssh://user@host names a login.
    return f"{m.group('scheme')}{MASK}@" if m.group("scheme").lower().startswith("http") else m.group(0)


def env_secrets(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Values of environment variables named like secrets, longest first (so none is half-masked)."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if _SECRET_VAR.search(k) and len(v) >= _MIN_SECRET_LEN}
    return tuple(sorted(values, key=len, reverse=True))


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with every secret described in the module docstring replaced by ****."""
    if not text:
        return text
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    text = _FLAG_VALUE.sub(lambda m: m.group("flag") + MASK, text)
    text = _BEARER.sub(lambda m: m.group("flag") + MASK, text)
    text = _TOKEN_VALUE.sub(lambda m: m.group("flag") + MASK, text)
    for value in env_secrets(environ):
        text = text.replace(value, MASK)
    return text


def redact_obj(obj: Any, environ: Mapping[str, str] | None = None) -> Any:
    """A copy of a JSON-like value with every string redacted (keys too)."""
    if isinstance(obj, str):
        return redact(obj, environ)
    if isinstance(obj, dict):
        return {
            redact(str(k), environ): MASK
            if isinstance(v, str) and v and _SECRET_VAR.search(str(k).replace("-", "_"))
            else redact_obj(v, environ)
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v, environ) for v in obj]
    return obj


def strip_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """(url without userinfo, (user, password)) for making a request with an Authorization header.

    urllib cannot take userinfo in the URL (http.client reads `user:pw@host` as a host with a bad
    port and raises InvalidURL), so callers send it as Basic auth instead.
    """
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=hostport)), (unquote(user), unquote(password))


class LineRedactor:
    """Redaction by whole line: text is held until its newline, so a secret split across two
    writes is seen whole before any of it leaves. `extra` are exact values to mask as well (a
    server's own API key, which no pattern or environment variable names)."""

    # A line longer than this leaves in pieces (a runaway progress bar must not hold memory).
    MAX_PENDING = 1 << 20

    def __init__(self, extra: tuple[str, ...] = ()) -> None:
        self._pending = ""
        self._extra = tuple(sorted((v for v in extra if v), key=len, reverse=True))

    def _redact(self, text: str) -> str:
        for value in self._extra:
            text = text.replace(value, MASK)
        return redact(text)

    def feed(self, s: str) -> str:
        """What may leave now: every complete line in the pending text plus s, redacted."""
        text = self._pending + s
        cut = text.rfind("\n") + 1
        if not cut and len(text) > self.MAX_PENDING:
            cut = len(text)
        self._pending = text[cut:]
        return self._redact(text[:cut]) if cut else ""

    def drain(self) -> str:
        """The partial last line, redacted: at close or exit, when no more of it will come."""
        text, self._pending = self._pending, ""
        return self._redact(text) if text else ""


class RedactingStream:
    """A text stream that redacts every line: the CLI wraps stdout/stderr in it, so a message
    from any layer (click, a library, a subprocess's captured output we echo) leaves redacted.
    A partial line waits for its newline even through flush() (click flushes after every echo,
    so a secret printed in two pieces would otherwise leave in two unredacted halves); what is
    left is written at close() or at interpreter exit. We print no prompts, so nothing waits."""

    def __init__(self, inner: TextIO) -> None:
        import atexit

        self._inner = inner
        self._lines = LineRedactor()
        atexit.register(self.drain)

    def write(self, s: str) -> int:
        out = self._lines.feed(s)
        if out:
            self._inner.write(out)
        return len(s)

    def drain(self) -> None:
        rest = self._lines.drain()
        if rest:
            self._inner.write(rest)
            self._inner.flush()

    def close(self) -> None:
        self.drain()
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


_MASKED_USERINFO = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?:(?P<user>[^/\s@:'\"]+):)?" + re.escape(MASK) + "@"
)


def drop_masked_credentials(obj: Any) -> Any:
    """A stored plan replayed: `https://user:****@host` becomes `https://user@host`, so uv and pip
    look the password up in netrc or the keyring instead of sending the mask."""
    if isinstance(obj, str):
        return _MASKED_USERINFO.sub(
            lambda m: m.group("scheme") + (m.group("user") + "@" if m.group("user") else ""), obj
        )
    if isinstance(obj, dict):
        return {k: drop_masked_credentials(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [drop_masked_credentials(v) for v in obj]
    return obj
