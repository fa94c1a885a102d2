"""Expectation over Transformation through SmoothGuard's own noise (the adaptive attack).

Each attack step draws ``samples`` fresh noisy copies of the current adversarial input in the
defense's noise space and sigma, exactly as ``SmoothGuard`` draws its copies (same
``GaussianNoise.copies`` path and per-copy seed rule, under a seed of its own for each step), and
averages the loss over them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smoothguard.errors import ConfigError
from smoothguard.guard import SmoothGuard
from smoothguard.models.base import MLLMAdapter
from smoothguard.noise import GaussianNoise, copy_seeds


def step_seed(seed: int, step: int, stream: int = 0) -> int:
    """A seed for one step of a run: the same (seed, step) always gives the same draws, so a resumed
    run continues exactly as an uninterrupted one."""
    return (seed * 1_000_003 + step * 97 + stream) % (2**63 - 1)


@dataclass(frozen=True)
class EOT:
    """``samples`` noisy copies per step with ``noise`` (the defense's space and sigma)."""

    noise: GaussianNoise
    samples: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ConfigError(f"EOT samples must be an integer >= 1, got {self.samples!r}")

    @classmethod
    def from_guard(cls, guard: SmoothGuard, samples: int = 8) -> EOT:
        """EOT through the noise of ``guard`` (its space, sigma and clamping)."""
        return cls(guard.noise, samples)

    def media(self, adapter: MLLMAdapter, medium: torch.Tensor, seed: int, step: int) -> list[dict[str, torch.Tensor]]:
        """Fresh noisy model inputs of ``medium`` for ``step`` (differentiable w.r.t. ``medium``)."""
        seeds = copy_seeds(step_seed(seed, step, stream=1), range(self.samples))
        return self.noise.copies(adapter, medium, seeds)

    def describe(self) -> dict[str, object]:
        return {
            "samples": self.samples,
            "sigma": self.noise.sigma,
            "noise_space": self.noise.space,
            "clamp": self.noise.clamp,
        }
