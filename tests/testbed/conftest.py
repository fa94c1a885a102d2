"""Fixtures of the testbed's tests."""

import pytest

from smoothguard import load_model


@pytest.fixture(scope="module")
def testbed():
    """The shipped testbed checkpoint, loaded once per test module."""
    return load_model("testbed")
