"""Projected gradient descent on the model's own input space, through the adapter's
differentiable preprocessing.

``PGD`` attacks one image in [0, 1] pixel space: ``eps`` and ``alpha`` are in 1/255 pixel units
(L2: the L2 norm of the perturbation, times 255). The perturbation lives on the user's pixels at
their own size (resizing is part of the differentiable path), and the result is quantised to 8
bits before its final evaluation, as a saved PNG would be. ``WaveformPGD`` (``attacks/audio.py``)
does the same on a [-1, 1] waveform with amplitude units.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from smoothguard.attacks import NORMS, SCHEDULES
from smoothguard.attacks.base import Attack, Problem, check_range
from smoothguard.attacks.eot import step_seed
from smoothguard.errors import ConfigError, InputError


class PGD(Attack):
    """Sign-gradient PGD in [0, 1] pixel space (Madry et al.; Qi et al.'s visual jailbreak).

    Parameters: ``eps`` budget (1/255 units; ``None`` = unconstrained), ``alpha`` step (1/255; the
    first step's size under a schedule), ``steps``, ``norm`` (``linf`` | ``l2``), ``schedule``
    (``cosine``: the step size decays from ``alpha`` to 0 along a half cosine; or ``constant``),
    ``random_start`` (uniform in the eps-ball; when unconstrained, a uniform random input, as Qi et al.);
    the rest (``restarts``, ``eot``, ``early_stop``, ``check_every``, ``seed``, ``checkpoint_every``,
    ``progress``) as :class:`~smoothguard.attacks.base.Attack`.
    """

    modality: ClassVar[str] = "image"
    bounds: ClassVar[tuple[float, float]] = (0.0, 1.0)
    unit: ClassVar[float] = 1 / 255

    def __init__(
        self,
        *,
        eps: float | None = 32,
        alpha: float = 1,
        steps: int = 100,
        norm: str = "linf",
        schedule: str = "cosine",
        random_start: bool = True,
        **settings: Any,
    ) -> None:
        if eps is not None and (not _is_number(eps) or eps < 0):
            raise ConfigError(f"eps must be a number >= 0 (in {self.unit_name}) or None, got {eps!r}")
        if not _is_number(alpha) or alpha <= 0:
            raise ConfigError(f"alpha must be a number > 0 (in {self.unit_name}), got {alpha!r}")
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
        if schedule not in SCHEDULES:
            raise ConfigError(f"unknown step-size schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
        super().__init__(steps=steps, **settings)
        self.eps, self.alpha, self.norm, self.schedule, self.random_start = eps, alpha, norm, schedule, random_start

    @property
    def unit_name(self) -> str:
        return "1/255 pixel units"

    def config(self) -> dict[str, Any]:
        """The hyperparameters that define a run (a checkpoint must match them to resume; ``steps`` only under
        the cosine schedule, whose step sizes depend on it: a constant-step run can be extended)."""
        described = {
            "attack": type(self).__name__,
            "eps": self.eps,
            "alpha": self.alpha,
            "norm": self.norm,
            "schedule": self.schedule,
            "random_start": self.random_start,
            "restarts": self.restarts,
            "seed": self.seed,
            "eot": None if self.eot is None else self.eot.describe(),
        }
        return described if self.schedule == "constant" else {**described, "steps": self.steps}

    def step_size(self, step: int) -> float:
        """The step size of step ``step`` in the medium's units ([0, 1] pixels): ``alpha``, or under the cosine
        schedule ``alpha * (1 + cos(pi * step / steps)) / 2``."""
        alpha = self.alpha * self.unit
        if self.schedule == "cosine":
            return alpha * (1 + math.cos(math.pi * step / self.steps)) / 2
        return alpha

    def finalize(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The input as it will be saved: on the 8-bit grid and, wherever the grid allows, inside
        the budget around ``x0`` (L-inf: nearest grid value within the ball; L2: the largest
        on-grid shrink of the perturbation that fits)."""
        levels = 255
        if self.eps is None:
            return (x * levels).round().clamp(0, levels) / levels
        eps = self.eps * self.unit * levels
        if self.norm == "linf":
            low = torch.ceil(x0 * levels - eps - 1e-6).clamp(min=0)
            high = torch.floor(x0 * levels + eps + 1e-6).clamp(max=levels)
            return torch.minimum(torch.maximum((x * levels).round(), low), high) / levels

        def on_grid(scale: float) -> torch.Tensor:
            return ((x0 + scale * (x - x0)) * levels).round().clamp(0, levels) / levels

        if ((on_grid(1.0) - x0) * levels).norm() <= eps:
            return on_grid(1.0)
        low_scale, high_scale = 0.0, 1.0
        for _ in range(30):  # bisection on the shrink factor
            middle = (low_scale + high_scale) / 2
            low_scale, high_scale = (
                (middle, high_scale) if ((on_grid(middle) - x0) * levels).norm() <= eps else (low_scale, middle)
            )
        return on_grid(low_scale)

    # ------------------------------------------------------------------ internal
    def _check_medium(self, medium: torch.Tensor) -> torch.Tensor:
        if not isinstance(medium, torch.Tensor) or medium.dim() != 3 or medium.shape[0] != 3:
            raise InputError("PGD attacks one image given as a [3, H, W] tensor in [0, 1] (see inputs.load_image)")
        return check_range(medium, self.bounds, "image pixels")

    def _start(self, x0: torch.Tensor, seed: int) -> torch.Tensor:
        if not self.random_start:
            return x0.clone()
        generator = torch.Generator().manual_seed(step_seed(seed, 0, stream=3))
        if self.eps is None:  # Qi et al.'s unconstrained attack starts from uniform noise
            low, high = self.bounds
            return (low + (high - low) * torch.rand(x0.shape, generator=generator)).to(x0.device)
        eps = self.eps * self.unit
        noise = torch.rand(x0.shape, generator=generator) * 2 - 1
        if self.norm == "l2":
            noise = noise / noise.norm().clamp_min(1e-12) * torch.rand((), generator=generator)
        return self._project(x0 + eps * noise.to(x0.device), x0)

    def _iterate(self, problem: Problem, x: torch.Tensor, step: int, seed: int) -> tuple[float, torch.Tensor]:
        """One sign-gradient step (L-inf; L2: along the normalised gradient), projected onto the budget."""
        x.requires_grad_(True)
        loss = self._loss(problem, x, step, seed)
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            return loss.item(), self._project(self._step(x, grad, step), problem.x0)

    def _step(self, x: torch.Tensor, grad: torch.Tensor, step: int) -> torch.Tensor:
        alpha = self.step_size(step)
        if self.norm == "linf":
            return x - alpha * grad.sign()
        return x - alpha * grad / grad.norm().clamp_min(1e-12)

    def _project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        if self.eps is not None:
            eps = self.eps * self.unit
            delta = x - x0
            if self.norm == "linf":
                delta = delta.clamp(-eps, eps)
            else:
                delta = delta * (eps / delta.norm().clamp_min(1e-12)).clamp(max=1.0)
            x = x0 + delta
        return x.clamp(*self.bounds)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
