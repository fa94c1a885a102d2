"""Expectation over Transformation through SmoothGuard's own noise and purifier (the adaptive attack).

Each attack step draws ``samples`` fresh noisy copies of the current adversarial input in the
defense's noise space and sigma, purified by the defense's purifier when it has one, exactly as
``SmoothGuard`` makes its copies (same ``GaussianNoise.copies`` path and per-copy seed rule, under a seed
of its own for each step), adds the clean candidate the vote also sees (through the purifier when the
guard purifies it), and averages the loss over all of them: the gradient runs through noise and purifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from smoothguard.errors import check_int
from smoothguard.guard import SmoothGuard
from smoothguard.models.base import MLLMAdapter
from smoothguard.noise import GaussianNoise, check_purifier_space, copy_seeds
from smoothguard.purify import identity


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A seed for one step of a run: the same (seed, step) always gives the same draws, so a resumed
    run continues exactly as an uninterrupted one."""
    return (seed * 1_000_003 + step * 97 + stream) % (2**63 - 1)


@dataclass(frozen=True)
class EOT:
    """``samples`` noisy copies per step with ``noise`` (the defense's space and sigma), each through
    ``purifier`` (``smoothguard.purify``; pixel space) when one is given; with ``clean`` the clean input as
    one more candidate (through ``purifier``, told the noise's sigma, when ``purify_clean``), as
    ``SmoothGuard`` votes over it."""

    noise: GaussianNoise
    samples: int = 8
    purifier: Any = None
    clean: bool = True
    purify_clean: bool = True

    def __post_init__(self) -> None:
        check_int("EOT samples", self.samples, minimum=1)
        if self.purifier is not None:
            check_purifier_space(self.noise.space)

    @classmethod
    def from_guard(cls, guard: SmoothGuard, samples: int = 8) -> EOT:
        """EOT through every candidate ``guard`` votes over: its noise (space, sigma and clamping) and purifier,
        and its clean input (purified as the guard purifies it)."""
        return cls(guard.noise, samples, guard.purifier, clean=True, purify_clean=guard.config.purify_clean)

    @property
    def candidates(self) -> int:
        """Media per step: the noisy samples, and the clean one with ``clean``."""
        return self.samples + int(self.clean)

    def media(self, adapter: MLLMAdapter, medium: torch.Tensor, seed: int, step: int) -> list[dict[str, torch.Tensor]]:
        """Model inputs of ``medium`` for ``step``: ``samples`` fresh noisy copies, then the clean candidate
        with ``clean`` (differentiable w.r.t. ``medium``)."""
        seeds = copy_seeds(step_seed(seed, step, stream=1), range(self.samples))
        copies = self.noise.copies(adapter, medium, seeds, purifier=self.purifier)
        if not self.clean:
            return copies
        clean = medium.unsqueeze(0)
        if self.purifier is not None and self.purify_clean:
            clean = self.purifier(clean, self.noise.sigma).clamp(0, 1)
        return [*copies, adapter.preprocess(clean)]

    def describe(self) -> dict[str, object]:
        """The settings; ``purifier`` (its identity) only when there is one."""
        described: dict[str, object] = {
            "samples": self.samples,
            "clean": self.clean,
            "sigma": self.noise.sigma,
            "noise_space": self.noise.space,
            "clamp": self.noise.clamp,
        }
        if self.purifier is None:
            return described
        return {**described, "purifier": identity(self.purifier), "purify_clean": self.purify_clean}
