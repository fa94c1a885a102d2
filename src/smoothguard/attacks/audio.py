"""PGD on an audio waveform (Qwen2-Audio), through the adapter's differentiable log-mel path."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from smoothguard.attacks.base import check_range
from smoothguard.attacks.pgd import PGD
from smoothguard.errors import InputError


class WaveformPGD(PGD):
    """``PGD`` on a mono waveform [T] in [-1, 1] at the model's sampling rate.

    ``eps`` and ``alpha`` are in amplitude units (a full-scale sine has amplitude 1; eps 0.01 is
    -40 dBFS); the result stays float32 (save it as a float WAV to keep it bit-exact).
    """

    modality: ClassVar[str] = "audio"
    bounds: ClassVar[tuple[float, float]] = (-1.0, 1.0)
    unit: ClassVar[float] = 1.0

    def __init__(self, *, eps: float | None = 0.01, alpha: float = 0.001, **kwargs: Any) -> None:
        super().__init__(eps=eps, alpha=alpha, **kwargs)

    @property
    def unit_name(self) -> str:
        return "amplitude units"

    def finalize(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return x

    def _check_medium(self, medium: torch.Tensor) -> torch.Tensor:
        if not isinstance(medium, torch.Tensor) or medium.dim() != 1:
            raise InputError("WaveformPGD attacks one mono waveform given as a [T] tensor (see inputs.load_audio)")
        return check_range(medium, self.bounds, "waveform samples")
