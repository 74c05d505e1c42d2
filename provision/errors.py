"""Errors a user can act on. The CLI prints them as one line and exits non-zero, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an impossible request: one line on stderr, exit code 2."""

    exit_code = 2


class ProfileError(UserError):
    """A host profile that is malformed or lacks a required field."""


class OperationFailed(Exception):
    """A real step failed (an install, a build, a server): exit code 1, with the reason."""

    exit_code = 1
