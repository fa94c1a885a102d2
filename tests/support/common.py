"""Helpers every test area uses: the ../shared folder, exact error patterns, the reference-data mark."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared"


def exact(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern for exactly ``message``, the whole one-line error."""
    return "^" + re.escape(message) + "$"


def needs_reference(folder: Path, what: str) -> pytest.MarkDecorator:
    """Mark tests that compare with third-party reference data in ``folder`` (under ../shared/fixtures).

    Where the folder is absent they skip, and the session ends with a line naming it; under ``CI=true``
    (CI always has ../shared beside its clone) they fail instead, so a lost fixture cannot pass quietly."""
    return pytest.mark.reference(folder=folder, what=what)


def names_word(message: str, word: str) -> bool:
    """``word`` appears in ``message`` as a word of its own, in that case (not inside ``XXwordXX``)."""
    return re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", message) is not None
