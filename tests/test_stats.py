"""Tests of ``smoothguard.stats``."""

from __future__ import annotations

import pytest

from smoothguard import ConfigError, stats
from smoothguard.stats import clopper_pearson_lower
from support.certify import binomial_tail
from support.common import names_word


def reference_lower_bound(k: int, n: int, alpha: float) -> float:
    """The one-sided Clopper–Pearson bound by its definition: the p with P(X >= k | p) = alpha (bisection)."""
    low, high = 0.0, 1.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if binomial_tail(k, n, middle) < alpha else (low, middle)
    return low


@pytest.mark.parametrize(
    ("k", "n", "alpha", "expected"),
    [
        (10, 10, 0.05, 0.05 ** (1 / 10)),  # all successes: alpha ** (1/n) = 0.7411
        (100, 100, 0.001, 0.001 ** (1 / 100)),  # 0.9333, Cohen et al.'s n = 100
        (1, 10, 0.05, 1 - 0.95 ** (1 / 10)),  # one success: 1 - (1 - alpha) ** (1/n)
        (0, 10, 0.05, 0.0),
    ],
)
def test_clopper_pearson_closed_forms(k, n, alpha, expected):
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("k", "n", "alpha"), [(5, 10, 0.05), (7, 20, 0.05), (50, 100, 0.001), (990, 1000, 0.001)])
def test_clopper_pearson_matches_its_definition(k, n, alpha):
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(reference_lower_bound(k, n, alpha), rel=1e-7)


@pytest.mark.parametrize(("k", "n", "alpha"), [(11, 10, 0.05), (1, 0, 0.05), (-1, 10, 0.05), (5, 10, 0), (5, 10, 1)])
def test_clopper_pearson_rejects_bad_input(k, n, alpha):
    with pytest.raises(ConfigError):
        clopper_pearson_lower(k, n, alpha)


def test_two_sided_interval_and_mcnemar_match_their_definitions():
    from smoothguard.stats import clopper_pearson_interval, mcnemar_exact, rate_with_interval

    low, high = clopper_pearson_interval(5, 8)
    # Each tail holds 2.5%: P(X >= 5 | low) = 0.025 and P(X <= 5 | high) = 0.025.
    assert binomial_tail(5, 8, low) == pytest.approx(0.025, abs=1e-9)
    assert 1 - binomial_tail(6, 8, high) == pytest.approx(0.025, abs=1e-9)
    assert clopper_pearson_interval(0, 8)[0] == 0.0 and clopper_pearson_interval(8, 8)[1] == 1.0
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(0, 2) == pytest.approx(0.5)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 2**10)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert rate_with_interval(5, 8) == {"k": 5, "n": 8, "rate": 0.625, "ci": [low, high]}


def test_validate_alpha_refuses_a_string_with_config_error():
    """``isinstance(alpha, bool) or not isinstance(...)`` -> ``and``: a string alpha reaches ``0 < alpha``
    (TypeError) instead of ConfigError; and the message -> ``ConfigError(None)``."""
    with pytest.raises(ConfigError, match=r"alpha must be a number in \(0, 1\)"):
        stats.validate_alpha("0.05")


@pytest.mark.parametrize(
    ("k", "n", "word"),
    [(0, 0, "n"), (-1, 3, "k")],
)
def test_count_errors_name_the_count(k, n, word):
    """``check_int("n" | "k", ...)`` name -> None / "XXnXX" / "N" (and the same for "k") in _check_counts."""
    with pytest.raises(ConfigError) as caught:
        stats.clopper_pearson_lower(k, n, 0.05)
    assert names_word(str(caught.value), word)


def test_k_over_n_error_says_so():
    """``ConfigError(f"k must be <= n, ...")`` -> ``ConfigError(None)`` in _check_counts."""
    with pytest.raises(ConfigError, match="k must be <= n, got k=3, n=2"):
        stats.clopper_pearson_interval(3, 2)


def test_one_trial_is_a_valid_count():
    """``check_int("n", n, minimum=1)`` -> ``minimum=2``: n = 1 is a binomial sample (one success of one:
    the two-sided 95% interval is [0.025, 1], by hand: 0.025 ** (1/1))."""
    low, high = stats.clopper_pearson_interval(1, 1)
    assert low == pytest.approx(0.025) and high == 1.0


def test_binomial_test_defaults_to_a_fair_coin_and_uses_the_given_p():
    """``p: float = 0.5`` -> ``1.5`` (scipy refuses it), and ``binomtest(k, n, p)`` -> ``binomtest(k, n)``
    (p ignored). By hand: P(X = 0 | n = 2, p = 1/2) = 1/4, two-sided -> 1/2; at p = 0.1, the outcomes no
    likelier than X = 2 (0.01) are X = 2 alone -> 0.01."""
    assert stats.binomial_test(0, 2) == pytest.approx(0.5)
    assert stats.binomial_test(2, 2, p=0.1) == pytest.approx(0.01)


@pytest.mark.parametrize(("first", "second", "word"), [(-1, 0, "only_first"), (0, -1, "only_second")])
def test_mcnemar_errors_name_the_count(first, second, word):
    """``check_int("only_first" | "only_second", ...)`` name -> None / "XX...XX" / upper case."""
    with pytest.raises(ConfigError) as caught:
        stats.mcnemar_exact(first, second)
    assert names_word(str(caught.value), word)


def test_rate_with_interval_uses_the_given_confidence():
    """``clopper_pearson_interval(successes, n, confidence)`` -> confidence dropped (0.95 always). By hand:
    k = n = 1 at confidence 0.5 has lower bound (0.25) ** 1 = 0.25."""
    assert stats.rate_with_interval(1, 1, confidence=0.5)["ci"] == [pytest.approx(0.25), 1.0]
