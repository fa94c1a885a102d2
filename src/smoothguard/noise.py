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

The seed rule: noisy copy ``i`` of a query is drawn on the CPU from its own ``torch.Generator`` seeded
with ``copy_seed(query_seed(s, key), i)``, where ``s`` is the guard's seed and ``key`` names the query:
its id where the caller has one (an evaluation item's id), else a digest of its prompt and medium
(:func:`content_key`). Copy ``i`` of a query therefore has the same noise wherever it is drawn (the
guard's answer, adaptive sampling, ``certify``/``predict``), on every device, whatever the batch size,
the query's position in a batch, or how many copies are drawn; and two different queries never share
their noise, so the copies of one query tell an attacker nothing about another's (any change to an
input changes its noise).

torch and numpy are imported on first use, so that option checks (``validate_sigma``, ``NOISE_SPACES``)
cost nothing at start-up.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from smoothguard.errors import ConfigError, check_int, check_seed

if TYPE_CHECKING:
    import torch

    from smoothguard.models.base import MLLMAdapter

NOISE_SPACES = ("normalized", "pixel", "waveform")
#: Sigma when none is given, per space: the paper's 0.1 in normalized space; in pixel space its CLIP
#: equivalent, 0.1 x CLIP's mean std 0.2686 ~ 0.027 (~6.9/255; the space of remote models and the proxy);
#: 0.1 on waveforms.
DEFAULT_SIGMA = {"normalized": 0.1, "pixel": 0.027, "waveform": 0.1}
#: The largest sigma per space: past it the noise is all a copy holds (a pixel or sample range is 1 or 2
#: wide; 4 normalized units are ~1.07 pixel units for CLIP). Larger values are refused as mistakes.
MAX_SIGMA = {"normalized": 4.0, "pixel": 1.0, "waveform": 1.0}
#: Pixel and waveform copies are drawn and preprocessed in groups of at most this many noisy values
#: (2**25 float32 = 128 MiB), so one query's memory does not grow with copies x input size.
MAX_NOISY_VALUES = 2**25
_CLAMP_RANGE = {"pixel": (0.0, 1.0), "waveform": (-1.0, 1.0)}


def pixel_sigma(sigma_normalized: float, std: Sequence[float]) -> list[float]:
    """Per-channel [0, 1]-pixel sigma equivalent to ``sigma_normalized`` in normalised space."""
    return [sigma_normalized * s for s in std]


def validate_sigma(sigma: object, space: str | None = None) -> float:
    """``sigma`` as a float; ConfigError unless it is a finite number >= 0, and at most ``MAX_SIGMA[space]``
    when the space is known."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ConfigError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if space in MAX_SIGMA and sigma > MAX_SIGMA[space]:
        raise ConfigError(
            f"sigma {sigma:g} is over the largest sensible value in {space} space ({MAX_SIGMA[space]:g}); "
            f"sigma is in {space} units (see the README's noise-space table)"
        )
    return float(sigma)


def check_purifier_space(space: str | None) -> None:
    """The rule for purifiers, wherever one is set: a purifier cleans [0, 1] pixels, so its noise must be in
    pixel space (``None``: not chosen yet, and then pixel). ConfigError otherwise."""
    if space not in (None, "pixel"):
        raise ConfigError(
            f"a purifier cleans [0, 1] pixels: use noise space pixel, not {space} "
            "(sigma in pixel units; the paper's 0.1 normalized is ~0.027 pixel for CLIP)"
        )


def parse_sigmas(text: str, space: str | None = None) -> list[float]:
    """``--sigmas``: ``"0,0.05,0.1"`` -> ``[0.0, 0.05, 0.1]``, each checked by :func:`validate_sigma` (in
    ``space`` when given), at least one and no repeats."""
    try:
        sigmas = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigError(f"--sigmas must be comma-separated numbers such as 0,0.05,0.1; got {text!r}") from exc
    if not sigmas or len(set(sigmas)) != len(sigmas):
        raise ConfigError(f"--sigmas needs at least one value and no repeats; got {text!r}")
    return [validate_sigma(sigma, space) for sigma in sigmas]


def query_seed(seed: int, key: str) -> int:
    """The base seed of the query named ``key`` under the guard's ``seed`` (in [0, 2**32))."""
    import numpy as np

    check_seed(seed)
    digest = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")
    return int(np.random.SeedSequence([seed, digest]).generate_state(1)[0])


def content_key(prompt: str, medium: torch.Tensor) -> str:
    """A query's name when it has no id: ``"content:"`` + a BLAKE2b digest of its prompt and its medium's
    float32 values and shape (pixels [3, H, W] or a waveform [T])."""
    import torch

    values = medium.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(prompt.encode("utf-8"))
    digest.update(repr(tuple(values.shape)).encode())
    digest.update(memoryview(values.numpy()).cast("B"))
    return "content:" + digest.hexdigest()


def copy_seed(seed: int, index: int) -> int:
    """The noise seed of copy ``index`` under base ``seed``: the first 32-bit word of numpy's
    ``SeedSequence([seed, index])`` (independent streams, in [0, 2**32))."""
    import numpy as np

    check_seed(seed)
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
        if self.space not in NOISE_SPACES:
            raise ConfigError(f"unknown noise space {self.space!r}; choose one of {', '.join(NOISE_SPACES)}")
        validate_sigma(self.sigma, self.space)

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
        purifier: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """The model inputs of one noisy copy per seed of one medium (pixels [3, H, W] in [0, 1] or a
        waveform [T]): noise on ``adapter.preprocess``'s ``normalized_key`` tensor in normalized space,
        on the medium itself otherwise, drawn (and purified, then clamped to [0, 1], when a ``purifier`` is
        given: ``smoothguard.purify``'s protocol, pixel space only) and preprocessed
        ``MAX_NOISY_VALUES // media.numel()`` copies (at least one) at a time. ``clean``: the medium's
        ``preprocess`` output, when the caller already has it. Differentiable w.r.t. ``media`` (the defense
        runs it under ``no_grad``, the EOT attack through it)."""
        if purifier is not None:
            check_purifier_space(self.space)
        if self.space == "normalized":
            clean = adapter.preprocess(media.unsqueeze(0)) if clean is None else clean
            key = adapter.normalized_key
            noisy = self.perturb(clean[key], seeds)
            return [{**clean, key: noisy[i]} for i in range(len(seeds))]
        group = max(1, MAX_NOISY_VALUES // max(media.numel(), 1))
        copies: list[dict[str, torch.Tensor]] = []
        for start in range(0, len(seeds), group):
            noisy = self.perturb(media, seeds[start : start + group])
            if purifier is not None:
                noisy = purifier(noisy, self.sigma).clamp(0, 1)
            noisy_media = adapter.preprocess(noisy)
            copies += adapter.split_media(noisy_media, len(seeds[start : start + group]))
        return copies

    def perturb(self, x: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """``x`` [...] -> one noisy copy per seed [len(seeds), ...] on ``x``'s device, clamped for pixel
        and waveform spaces when ``clamp`` is set."""
        noise = self.draw(x.shape, seeds).to(device=x.device, dtype=x.dtype)
        noisy = x.unsqueeze(0) + noise
        if self.clamp and self.space in _CLAMP_RANGE:
            noisy = noisy.clamp(*_CLAMP_RANGE[self.space])
        return noisy
