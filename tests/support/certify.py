"""Helpers shared by several test modules (moved from tests/test_certify.py)."""

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def made_record(item_id, correct, radius, abstained=False):
    return {"id": item_id, "correct": correct, "radius": radius, "abstained": abstained}


def loud_clip(seed=0, samples=4000):
    """A quarter second of uniform noise at +-0.3 (16 kHz)."""
    return torch.from_numpy((0.3 * np.random.default_rng(seed).uniform(-1, 1, samples)).astype(np.float32))


def clopper_pearson_lower(k, n, alpha):
    """The one-sided lower bound, from scipy's beta quantile (0 when k = 0)."""
    from scipy.stats import beta

    return float(beta.ppf(alpha, k, n - k + 1)) if k else 0.0


def check_certificate(record, sigma, n0, n, alpha):
    """A certificate (or a certify record) against its own counts: the sums, the selected label, the bound,
    the radius sigma * Phi^-1(p_lower) and the abstention, all recomputed here."""
    counts, selection = record["counts"], record["selection_counts"]
    assert sum(selection.values()) == n0 and sum(counts.values()) == n
    assert selection[record["top"]] == max(selection.values())
    p_lower = clopper_pearson_lower(counts.get(record["top"], 0), n, alpha)
    assert record["p_lower"] == pytest.approx(p_lower, abs=1e-9)
    certified = p_lower > 0.5
    radius = sigma * NormalDist().inv_cdf(p_lower) if certified else 0.0
    assert record["radius"] == pytest.approx(radius, rel=1e-9, abs=1e-12)
    assert record["abstained"] is (not certified)
    assert record["answer"] == (record["top"] if certified else None)
