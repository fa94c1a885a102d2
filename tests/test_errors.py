"""The shared argument checks of ``smoothguard.errors``."""

import numpy as np
import pytest

from smoothguard.errors import MAX_SEED, ConfigError, check_int, check_seed
from support.common import exact


@pytest.mark.parametrize("value", [0, 1, 7, np.int64(3)])
def test_check_int_accepts_integers_in_range(value):
    assert check_int("n", value, minimum=0, maximum=7) == value and type(check_int("n", value, minimum=0)) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "n must be an integer >= 0, got -1"),
        (2.0, "n must be an integer >= 0, got 2.0"),
        (True, "n must be an integer >= 0, got True"),
        ("3", "n must be an integer >= 0, got '3'"),
        (8, "n must be an integer in [0, 7], got 8"),
    ],
)
def test_check_int_refuses_in_one_line(value, message):
    with pytest.raises(ConfigError, match=exact(message)):
        check_int("n", value, minimum=0, maximum=7)


def test_check_seed_is_the_range_of_numpys_seeds():
    assert MAX_SEED == 2**32
    assert check_seed(0) == 0 and check_seed(MAX_SEED - 1) == MAX_SEED - 1 and check_seed(np.uint32(5)) == 5
    np.random.SeedSequence(check_seed(MAX_SEED - 1))  # the largest seed is one numpy takes
    for bad in (-1, MAX_SEED, 1.0, False, None):
        with pytest.raises(ConfigError, match=exact(f"k-means seed must be an integer in [0, 2**32), got {bad!r}")):
            check_seed(bad, "k-means seed")
