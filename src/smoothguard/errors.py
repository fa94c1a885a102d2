"""Error hierarchy: every user-facing failure is a ``SmoothGuardError`` with a message that says
what was wrong and what to do about it (the CLI prints it on one line and exits non-zero); and the
argument checks every layer shares."""

from __future__ import annotations

import os
import stat
from numbers import Integral
from pathlib import Path

#: Refuse files larger than this before reading them.
DEFAULT_MAX_FILE_BYTES: int = 256 * 2**20
#: Seeds must fit k-means' ``random_state`` and numpy's generators: [0, 2**32).
MAX_SEED = 2**32


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


class DataError(InputError):
    """A benchmark folder or file that does not have the published layout, or items that do not join."""


class RunConflictError(ConfigError):
    """A run folder that was started with other settings (its records would be mixed with new ones)."""


class JudgeError(SmoothGuardError):
    """A judge that cannot give verdicts: unreachable endpoint, refused key, malformed reply."""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its class name when it has none): how a wrapped error is quoted."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) >= ``minimum`` (and <= ``maximum`` when given); ConfigError
    naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be an integer in [{minimum}, {maximum}], got {value!r}")
    return int(value)


def check_seed(value: object, name: str = "seed") -> int:
    """``value`` if it is an integer in [0, ``MAX_SEED``); ConfigError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= value < MAX_SEED:
        raise ConfigError(f"{name} must be an integer in [0, 2**32), got {value!r}")
    return int(value)


def check_file(
    source: str | os.PathLike[str], label: str, *, kind: str, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> Path:
    """``source`` as a ``Path``; InputError unless it is a regular, non-empty file of at most ``max_file_bytes``.
    Costs one ``stat``, so the command line checks a file before anything heavy loads."""
    path = Path(source)
    try:
        info = path.stat()
    except FileNotFoundError:
        hint = "URLs are not fetched: download the file first" if "://" in os.fspath(source) else "check the path"
        raise InputError(f"{label}: no such file; {hint}") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot be accessed ({exc.strerror}); check the path and permissions") from exc
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{label}: is a directory; pass the path of one {kind} file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{label}: is not a regular file; pass the path of an {kind} file")
    if info.st_size == 0:
        raise InputError(f"{label}: file is empty (0 bytes); pass a complete {kind} file")
    if info.st_size > max_file_bytes:
        raise InputError(
            f"{label}: file is {info.st_size:,} bytes, over the limit of {max_file_bytes:,} "
            "(max_file_bytes); shrink it, or raise max_file_bytes if you trust the file"
        )
    return path


def check_output_folder(folder: str | os.PathLike[str], label: str) -> Path:
    """``folder`` as a ``Path``; ConfigError unless it is (or can be made) a folder a file can be written in:
    a probe file is created and removed in it, or in its nearest existing parent when it does not exist yet
    (nothing is left behind). An unwritable, read-only or full folder, or a file where a folder is wanted,
    is so reported before any work starts."""
    path = Path(folder)
    existing = next(parent for parent in (path, *path.absolute().parents) if parent.exists())
    if not existing.is_dir():
        raise ConfigError(f"{label} {path}: {existing} is a file; pass a folder")
    probe = existing / f".smoothguard-write-check-{os.getpid()}"
    try:
        with probe.open("wb") as handle:
            handle.write(b"x")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"{label} {path} cannot be written: {exc.strerror or exc}; pass another folder") from None
    return path
