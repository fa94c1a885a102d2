"""Errors of the evaluation package (all ``SmoothGuardError`` subclasses: the CLI prints one line, exit 2)."""

from __future__ import annotations

from smoothguard.errors import ConfigError, InputError, SmoothGuardError


class DataError(InputError):
    """A benchmark folder or file that does not have the published layout, or items that do not join."""


class RunConflictError(ConfigError):
    """A run folder that was started with other settings (its records would be mixed with new ones)."""


class JudgeError(SmoothGuardError):
    """A judge that cannot give verdicts: unreachable endpoint, refused key, malformed reply."""
