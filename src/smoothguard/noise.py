"""Seeded Gaussian noise, ``x_i = x + sigma * N(0, I)``, in an explicit space.

Spaces and the units of ``sigma``:

- ``normalized``: added to the processor's ``pixel_values`` after ``(x - mean) / std`` (the paper's
  choice, default for local image models). One normalised unit is ``std`` pixel units, so
  ``sigma_pixel[c] = sigma * std[c]``; for CLIP (std ~ 0.27) sigma 0.1 ~ 0.027 in [0, 1] pixels,
  i.e. ~ 6.9 / 255. No clamping (the paper does not clamp).
- ``pixel``: added to [0, 1] pixels before preprocessing; model-independent, the only space for a
  remote model that receives an encoded image. ``sigma_normalized[c] = sigma / std[c]``. Clamped to
  [0, 1] by default (a real image cannot leave that range).
- ``waveform``: added to a [-1, 1] audio waveform (amplitude units); clamped to [-1, 1] by default.

Noise is drawn on the CPU from a ``torch.Generator`` seeded per query, so a seed gives the same
copies on every device and regardless of a query's position in a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from smoothguard.errors import ConfigError

if TYPE_CHECKING:
    from smoothguard.models.base import MLLMAdapter

NOISE_SPACES = ("normalized", "pixel", "waveform")
_CLAMP_RANGE = {"pixel": (0.0, 1.0), "waveform": (-1.0, 1.0)}


def pixel_sigma(sigma_normalized: float, std: Sequence[float]) -> list[float]:
    """Per-channel [0, 1]-pixel sigma equivalent to ``sigma_normalized`` in normalised space."""
    return [sigma_normalized * s for s in std]


def validate_sigma(sigma: object) -> float:
    """``sigma`` as a float; ConfigError unless it is a finite number >= 0."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ConfigError(f"sigma must be a finite number >= 0, got {sigma!r}")
    return float(sigma)


@dataclass(frozen=True)
class GaussianNoise:
    """``num_copies`` noisy copies of one input in ``space``, with standard deviation ``sigma``."""

    sigma: float
    space: str
    clamp: bool = True

    def __post_init__(self) -> None:
        validate_sigma(self.sigma)
        if self.space not in NOISE_SPACES:
            raise ConfigError(f"unknown noise space {self.space!r}; choose one of {', '.join(NOISE_SPACES)}")

    def draw(self, shape: Sequence[int], num_copies: int, seed: int) -> torch.Tensor:
        """Standard normal draws [num_copies, *shape] (float32, CPU), scaled by ``sigma``."""
        generator = torch.Generator().manual_seed(seed)
        return self.sigma * torch.randn((num_copies, *shape), generator=generator)

    def copies(
        self,
        adapter: MLLMAdapter,
        media: torch.Tensor,
        num_copies: int,
        seed: int,
        clean: dict[str, torch.Tensor] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """The model inputs of ``num_copies`` noisy copies of one medium (pixels [3, H, W] in [0, 1] or a
        waveform [T]): noise on ``adapter.preprocess``'s ``normalized_key`` tensor in normalized space,
        on the medium itself otherwise. ``clean``: the medium's ``preprocess`` output, when the caller
        already has it. Differentiable w.r.t. ``media`` (the defense runs it under ``no_grad``, the EOT
        attack through it)."""
        if self.space == "normalized":
            clean = adapter.preprocess(media.unsqueeze(0)) if clean is None else clean
            key = adapter.normalized_key
            noisy = self.perturb(clean[key], num_copies, seed)
            return [{**clean, key: noisy[i]} for i in range(num_copies)]
        noisy_media = adapter.preprocess(self.perturb(media, num_copies, seed))
        return [adapter.slice_media(noisy_media, i) for i in range(num_copies)]

    def perturb(self, x: torch.Tensor, num_copies: int, seed: int) -> torch.Tensor:
        """``x`` [...] -> noisy copies [num_copies, ...] on ``x``'s device, clamped for pixel and
        waveform spaces when ``clamp`` is set."""
        noise = self.draw(x.shape, num_copies, seed).to(device=x.device, dtype=x.dtype)
        noisy = x.unsqueeze(0) + noise
        if self.clamp and self.space in _CLAMP_RANGE:
            noisy = noisy.clamp(*_CLAMP_RANGE[self.space])
        return noisy
