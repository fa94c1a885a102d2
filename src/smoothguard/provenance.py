"""Versions of the software that produced a result, written into every result and summary."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

_PACKAGES = ("smoothguard", "torch", "transformers", "sentence-transformers", "scikit-learn")


@cache
def versions() -> dict[str, str | None]:
    """Installed version of each package that shapes a result (``None`` when absent); treat as read-only."""
    found: dict[str, str | None] = {}
    for package in _PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found
