"""Tests of ``smoothguard.answers``."""

from __future__ import annotations

import pytest

from smoothguard import ConfigError
from smoothguard.answers import RefusalParser, YesNoParser, target_generated
from smoothguard.certify import ChoiceParser
from smoothguard.eval import parse_yes_no


def test_answer_parsers():
    yes_no = YesNoParser()
    assert [yes_no(a) for a in ("Yes, there is a cat.", "No.", "yes", "There is not a cat")] == ["yes", "no"] * 2
    choice = ChoiceParser("ABCD")
    answers = ("B", "(C) a cat", "D. the dog", "The answer is A.", "ANSWER: (B)", "E", "the answer is a cat")
    assert [choice(a) for a in answers] == ["B", "C", "D", "A", "B", "unparsed", "unparsed"]
    refusal = RefusalParser()
    assert [refusal(a) for a in ("I’m sorry, I can't help.", "Sure, here it is.")] == ["refuse", "comply"]
    with pytest.raises(ConfigError):
        ChoiceParser("ab")


@pytest.mark.parametrize(
    ("answer", "yes"),
    [
        ("Yes", True),
        ("No", False),
        ("no.", False),
        ("No, there is not.", False),
        ("Yes, there is a dog in the image.", True),
        ("There is no dog.", False),
        ("It is not there", False),
        ("Yes. No.", True),  # only the first sentence counts
        ("NO", True),  # the reference matches "No", "no" and "not" case-sensitively
        ("Not really", True),
        ("No\nthere is none", True),  # ... and splits on spaces only
        ("", True),
    ],
)
def test_parse_yes_no_follows_llava(answer, yes):
    assert parse_yes_no(answer) is yes


def test_answer_parser_names_are_listed_comma_separated():
    """``', '.join(PARSERS)`` -> ``'XX, XX'.join(...)`` in check_parser_name's message."""
    from smoothguard.answers import check_parser_name

    with pytest.raises(ConfigError) as error:
        check_parser_name("maybe")
    assert str(error.value) == "unknown answer parser 'maybe'; choose one of yes-no, choice, refusal"


def test_fold_lower_cases():
    """``.lower()`` -> ``.upper()`` in fold (equivalent for matching, where both sides are folded; not for callers)."""
    from smoothguard.answers import fold

    assert fold("I\u2019M Sorry") == "i'm sorry"


def test_choice_parser_default_letters_and_its_checks():
    """The default ``"ABCD"`` -> ``"XXABCDXX"`` or ``"abcd"``; ``self.letters = None``; ``or`` -> ``and`` between
    the alphabetic and ASCII checks (Greek capitals are upper-case letters, not ASCII); the message -> None."""
    from smoothguard.answers import ChoiceParser, load_parser

    assert ChoiceParser().letters == "ABCD" and load_parser("choice")("B) the second") == "B"
    assert load_parser("choice")("X) no such choice") == ChoiceParser.UNPARSED
    with pytest.raises(ConfigError, match="distinct upper-case letters"):
        ChoiceParser("\u0391\u0392")


def test_refusal_parser_uses_its_own_phrases_and_checks_them():
    """``refusal_phrase(answer, self.phrases)`` -> ``refusal_phrase(answer)``; ``or`` -> ``and`` in the empty /
    blank checks; the message -> None, ``XX...XX`` or upper case."""
    from smoothguard.answers import RefusalParser

    custom = RefusalParser(["no way"])
    assert custom("No way, not today") == "refuse" and custom("I cannot") == "comply"
    for phrases in ([], ["  "]):
        with pytest.raises(ConfigError) as error:
            RefusalParser(phrases)
        assert str(error.value) == "refusal phrases must be a non-empty list of non-empty strings"


# parse_yes_no


def test_comma_after_no_is_dropped():
    """parse_yes_no: ``text.replace(",", "")`` -> ``replace("XX,XX", "")`` / ``replace(",", "XXXX")``:
    "No, thanks" reads as no only once the comma is gone."""
    assert parse_yes_no("No, thanks") is False


def test_parsers_of_answers():
    assert [YesNoParser()(a) for a in ("Yes.", "No, it is not", "There is not one")] == ["yes", "no", "no"]
    assert RefusalParser()("I\u2019m sorry, I can\u2019t") == "refuse" and RefusalParser()("SECRET") == "comply"


@pytest.mark.parametrize(
    ("answer", "target", "generated"),
    [
        ("Sure,   HERE is\nhow", "sure, here is how", True),  # case and runs of whitespace ignored
        ("Well. Sure, here is how", "Sure, here is how", True),  # anywhere in the answer
        ("Sure, here", "Sure, here is how", False),
        ("Sure,here is how", "Sure, here is how", False),  # a space is not nothing
    ],
)
def test_target_generated_ignores_case_and_whitespace_runs_only(answer, target, generated):
    """target_generated: ``lower()`` dropped on either side, ``split()`` for ``split(" ")``, ``in`` for
    ``==`` or ``not in``."""
    assert target_generated(answer, target) is generated
