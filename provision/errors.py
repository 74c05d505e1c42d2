"""Errors a user can act on. The CLI prints them as one line and exits non-zero, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an impossible request: one line on stderr, exit code 2."""

    exit_code = 2


class NotInstalled(UserError):
    """What the command needs is not installed under the root it looked in; the command may add
    where else it could be (provision.install.last_root)."""


class ProfileError(UserError):
    """A host profile that is malformed or lacks a required field."""


class OperationFailed(Exception):
    """A real step failed (an install, a build, a server): exit code 1, with the reason."""

    exit_code = 1
