"""Answer parsers: free-text answers -> discrete labels, the classes that certification votes on.

A parser is any callable ``str -> str`` (these also carry a ``name``); they reuse the evaluation package's
parsing (POPE's yes/no, the refusal judge).
"""

from __future__ import annotations

import re

from smoothguard.errors import ConfigError
from smoothguard.eval.judges import RefusalJudge, SafetyCase
from smoothguard.eval.pope import parse_yes_no


class YesNoParser:
    """``yes`` / ``no`` with LLaVA's POPE parsing (:func:`smoothguard.eval.pope.parse_yes_no`)."""

    name = "yes-no"

    def __call__(self, answer: str) -> str:
        return "yes" if parse_yes_no(answer) else "no"


class ChoiceParser:
    """The choice letter an answer starts with (``B``, ``(B)``, ``B.``, ``B) ...``), else the letter after
    ``answer is`` / ``answer:`` (any case) anywhere in it; ``unparsed`` when neither is one of ``letters``.
    Letters are upper-case only, and an answer that opens with the article "A " reads as choice A, as in
    common multiple-choice scorers."""

    name = "choice"
    UNPARSED = "unparsed"

    def __init__(self, letters: str = "ABCD") -> None:
        if not letters.isalpha() or not letters.isascii() or not letters.isupper() or len(set(letters)) != len(letters):
            raise ConfigError(f"choice letters must be distinct upper-case letters, e.g. ABCD; got {letters!r}")
        self.letters = letters
        self._leading = re.compile(rf"\s*\(?([{letters}])(?:[).:,]|\s|$)")
        self._stated = re.compile(rf"(?i:answer(?: is)?)\s*:?\s*\(?([{letters}])\b")

    def __call__(self, answer: str) -> str:
        found = self._leading.match(answer) or self._stated.search(answer)
        return found.group(1) if found else self.UNPARSED


class RefusalParser:
    """``refuse`` when the refusal judge finds a refusal phrase in the answer, else ``comply``."""

    name = "refusal"

    def __init__(self, judge: RefusalJudge | None = None) -> None:
        self.judge = judge or RefusalJudge()

    def __call__(self, answer: str) -> str:
        verdict = self.judge.judge([SafetyCase("", answer)])[0]
        return "refuse" if verdict.label == "safe" else "comply"
