"""Error hierarchy: every user-facing failure is a ``SmoothGuardError`` with a message that says
what was wrong and what to do about it. The CLI prints the message on one line and exits non-zero."""

from __future__ import annotations


class SmoothGuardError(Exception):
    """Base class of every error SmoothGuard raises on purpose."""


class InputError(SmoothGuardError, ValueError):
    """An image, audio clip or prompt that cannot be used (missing, corrupt, too large, wrong shape)."""


class ConfigError(SmoothGuardError, ValueError):
    """An invalid option value (sigma < 0, unknown noise space, num_copies < 0, ...)."""


class ModelLoadError(SmoothGuardError):
    """A model that cannot be found, loaded, or is of an unsupported family."""


class UnsupportedError(SmoothGuardError):
    """A valid request that the chosen model or adapter cannot serve (e.g. audio on an image model)."""
