"""Tests of ``smoothguard.sampling``."""

import pytest

from smoothguard import ConfigError
from smoothguard.sampling import AdaptiveSampling


def test_adaptive_schedule_and_level():
    plan = AdaptiveSampling(alpha=0.05, round_size=2)
    # Looks at 2 and 4 copies can never stop (0.5 ** m >= level); 6 and 8 can: alpha / 2 each.
    assert plan.level(10) == pytest.approx(0.025)
    assert plan.schedule(10) == [6, 8, 10]
    assert plan.decided(6, 6, 10) and not plan.decided(5, 6, 10)
    assert plan.schedule(4) == [4]
    for bad in ({"alpha": 1.5}, {"round_size": 0}):
        with pytest.raises(ConfigError):
            AdaptiveSampling(**bad)
