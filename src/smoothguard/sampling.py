"""Adaptive sampling: the stopping rule that lets ``SmoothGuard`` answer fewer copies when the vote is clear."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from smoothguard.errors import check_int
from smoothguard.stats import clopper_pearson_lower, validate_alpha


@dataclass(frozen=True)
class AdaptiveSampling:
    """Stopping rule for ``GuardConfig(adaptive=...)``: answer the clean input and the noisy copies in
    rounds (:meth:`schedule`: a first round up to the first look that could stop, then ``round_size`` copies
    a round) and stop once the majority cluster's share of the noisy copies answered so far
    is decided: its one-sided Clopper–Pearson lower bound exceeds 1/2 at the per-look level (below), or
    all ``num_copies`` copies are answered.

    Per-look level: ``alpha`` split (Bonferroni) over the looks at which a stop is possible (a look after
    ``m`` copies can stop only if ``0.5**m`` is below the level), so the chance of stopping on a share that
    is not above 1/2 is at most ``alpha`` for a fixed cluster. The clusters are themselves fitted to the
    answers, so this is a stopping rule, not a certificate (``smoothguard.certify`` gives those).
    """

    alpha: float = 0.05
    round_size: int = 2

    def __post_init__(self) -> None:
        validate_alpha(self.alpha)
        check_int("round_size", self.round_size, minimum=1)

    def schedule(self, num_copies: int) -> list[int]:
        """Noisy copies answered after each round: the multiples of ``round_size`` below ``num_copies`` at
        which a stop is possible, then ``num_copies`` (the first round also answers the clean input)."""
        level = self.level(num_copies)
        return [*(m for m in self._looks(num_copies) if 0.5**m < level), num_copies]

    def level(self, num_copies: int) -> float:
        """The per-look significance level for ``num_copies`` copies (see the class docstring)."""
        looks = self._looks(num_copies)
        for divisor in range(1, len(looks) + 1):
            if sum(0.5**m < self.alpha / divisor for m in looks) <= divisor:
                return self.alpha / divisor
        return self.alpha

    def decided(self, majority: int, copies: int, num_copies: int) -> bool:
        """Whether ``majority`` of ``copies`` answered noisy copies decide the vote (out of ``num_copies``)."""
        return clopper_pearson_lower(majority, copies, self.level(num_copies)) > 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _looks(self, num_copies: int) -> list[int]:
        """Candidate looks: every ``round_size`` copies, short of ``num_copies`` (where sampling ends anyway)."""
        return list(range(self.round_size, num_copies, self.round_size))
