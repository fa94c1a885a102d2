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

The per-copy seed rule: noisy copy ``i`` of a query under seed ``s`` is drawn on the CPU from its own
``torch.Generator`` seeded with :func:`copy_seed` ``(s, i)``. Copy ``i`` therefore has the same noise
wherever it is drawn (the guard's answer, adaptive sampling, ``certify``/``predict``), on every device,
whatever the batch size, the query's position in a batch, or how many copies are drawn.

torch and numpy are imported on first use, so that option checks (``validate_sigma``, ``NOISE_SPACES``)
cost nothing at start-up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smoothguard.errors import ConfigError, check_int

if TYPE_CHECKING:
    import torch

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


def copy_seed(seed: int, index: int) -> int:
    """The noise seed of copy ``index`` under base ``seed``: the first 32-bit word of numpy's
    ``SeedSequence([seed, index])`` (independent streams, in [0, 2**32))."""
    import numpy as np

    check_int("seed", seed, minimum=0)
    check_int("copy index", index, minimum=0)
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def copy_seeds(seed: int, indices: Iterable[int]) -> list[int]:
    """:func:`copy_seed` of every copy in ``indices``."""
    return [copy_seed(seed, index) for index in indices]


@dataclass(frozen=True)
class GaussianNoise:
    """Noisy copies of one input in ``space``, with standard deviation ``sigma``; one copy per seed."""

    sigma: float
    space: str
    clamp: bool = True

    def __post_init__(self) -> None:
        validate_sigma(self.sigma)
        if self.space not in NOISE_SPACES:
            raise ConfigError(f"unknown noise space {self.space!r}; choose one of {', '.join(NOISE_SPACES)}")

    def draw(self, shape: Sequence[int], seeds: Sequence[int]) -> torch.Tensor:
        """Gaussian draws [len(seeds), *shape] (float32, CPU) with std ``sigma``: row ``j`` from a
        generator seeded with ``seeds[j]``."""
        import torch

        rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed)) for seed in seeds]
        return self.sigma * torch.stack(rows) if rows else torch.zeros((0, *shape))

    def copies(
        self,
        adapter: MLLMAdapter,
        media: torch.Tensor,
        seeds: Sequence[int],
        clean: dict[str, torch.Tensor] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """The model inputs of one noisy copy per seed of one medium (pixels [3, H, W] in [0, 1] or a
        waveform [T]): noise on ``adapter.preprocess``'s ``normalized_key`` tensor in normalized space,
        on the medium itself otherwise. ``clean``: the medium's ``preprocess`` output, when the caller
        already has it. Differentiable w.r.t. ``media`` (the defense runs it under ``no_grad``, the EOT
        attack through it)."""
        if self.space == "normalized":
            clean = adapter.preprocess(media.unsqueeze(0)) if clean is None else clean
            key = adapter.normalized_key
            noisy = self.perturb(clean[key], seeds)
            return [{**clean, key: noisy[i]} for i in range(len(seeds))]
        noisy_media = adapter.preprocess(self.perturb(media, seeds))
        return [adapter.slice_media(noisy_media, i) for i in range(len(seeds))]

    def perturb(self, x: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """``x`` [...] -> one noisy copy per seed [len(seeds), ...] on ``x``'s device, clamped for pixel
        and waveform spaces when ``clamp`` is set."""
        noise = self.draw(x.shape, seeds).to(device=x.device, dtype=x.dtype)
        noisy = x.unsqueeze(0) + noise
        if self.clamp and self.space in _CLAMP_RANGE:
            noisy = noisy.clamp(*_CLAMP_RANGE[self.space])
        return noisy
