"""Binomial statistics: Clopper–Pearson bounds and the two-sided binomial test (scipy, imported on use).

Used by certification (lower bounds, PREDICT's test), adaptive sampling (the stopping rule) and every
rate a report prints with its 95% interval.
"""

from __future__ import annotations

from collections.abc import Sequence

from smoothguard.errors import ConfigError, check_int


def validate_alpha(alpha: object) -> float:
    """``alpha`` as a float; ConfigError unless it is a number in (0, 1)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"alpha must be a number in (0, 1), e.g. 0.001; got {alpha!r}")
    return float(alpha)


def _check_counts(k: int, n: int) -> None:
    check_int("n", n, minimum=1)
    check_int("k", k, minimum=0)
    if k > n:
        raise ConfigError(f"k must be <= n, got k={k}, n={n}")


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper–Pearson lower bound on a binomial proportion after ``k`` successes in
    ``n`` trials: the ``alpha`` quantile of Beta(k, n - k + 1); 0 when k = 0."""
    _check_counts(k, n)
    validate_alpha(alpha)
    from scipy.stats import beta

    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def clopper_pearson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper–Pearson interval for ``k`` successes in ``n`` trials at ``confidence``
    (exact: each tail holds at most ``(1 - confidence) / 2``)."""
    _check_counts(k, n)
    tail = validate_alpha(1 - confidence) / 2
    from scipy.stats import beta

    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def binomial_test(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test of ``k`` successes in ``n`` trials against success probability ``p``:
    its p-value."""
    _check_counts(k, n)
    from scipy.stats import binomtest

    return float(binomtest(k, n, p).pvalue)


def normal_quantile(p: float) -> float:
    """``Phi^-1(p)``, the standard normal quantile of ``p`` in (0, 1)."""
    from scipy.stats import norm

    return float(norm.ppf(p))


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Exact two-sided McNemar test of a paired difference: the binomial test of ``only_first`` (items a
    success under the first condition alone) among the ``only_first + only_second`` discordant items, at
    p = 1/2. Its p-value; 1.0 when no item is discordant."""
    check_int("only_first", only_first, minimum=0)
    check_int("only_second", only_second, minimum=0)
    if only_first + only_second == 0:
        return 1.0
    return binomial_test(only_first, only_first + only_second, 0.5)


def rate_with_interval(successes: int, n: int, confidence: float = 0.95) -> dict[str, float | int | list[float]]:
    """``{"k", "n", "rate", "ci"}``: a rate with its two-sided Clopper–Pearson interval."""
    return {
        "k": successes,
        "n": n,
        "rate": successes / n,
        "ci": list(clopper_pearson_interval(successes, n, confidence)),
    }


def format_rate(k: int, n: int, interval: Sequence[float] | None = None) -> str:
    """``"0.625 [0.24, 0.91] (5/8)"``: the rate, its interval (default: the 95% Clopper–Pearson one)
    and the counts."""
    low, high = clopper_pearson_interval(k, n) if interval is None else interval
    return f"{k / n:.3f} [{low:.2f}, {high:.2f}] ({k}/{n})"
