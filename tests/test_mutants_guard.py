"""One test per hole that mutation testing (mutmut, README "Mutation testing") found in
``smoothguard.guard`` and ``smoothguard.embed``; each docstring names the mutation it catches."""

from smoothguard.guard import _jsonable


def test_jsonable_keeps_plain_values_and_names_other_objects():
    """_jsonable: None, bools, numbers and strings as they are; lists and tuples as lists; dict keys as
    strings; any other object by its class name."""
    value = {"a": (1, 2.5, [True, None]), 3: "x", "stop": object()}
    assert _jsonable(value) == {"a": [1, 2.5, [True, None]], "3": "x", "stop": "object"}
