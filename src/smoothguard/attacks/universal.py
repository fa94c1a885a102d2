"""Qi et al.'s universal visual jailbreak (AAAI 2024): one image optimised so that the model
continues with sentences of a target corpus, whatever the prompt."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from smoothguard.attacks.base import AttackResult
from smoothguard.attacks.eot import EOT
from smoothguard.attacks.objectives import TargetObjective
from smoothguard.attacks.pgd import PGD
from smoothguard.models.base import MLLMAdapter


class UniversalJailbreak:
    """Qi et al.'s attack: sign-gradient PGD (``eps`` and ``alpha`` in 1/255; ``None`` =
    unconstrained, started from uniform noise), ``targets_per_step`` corpus sentences sampled per
    step, losses averaged over the prompts, no early stop, the lowest-loss image kept (the one that
    scores best on the attack's own prompts); checkpoints every ``checkpoint_every`` steps. Paper
    settings: eps 16/32/64 or unconstrained, alpha 1, 5000 steps, 8 targets per step, a constant step
    (``schedule="constant"``, the default here; ``"cosine"`` decays it).
    """

    def __init__(
        self,
        *,
        eps: float | None = 32,
        alpha: float = 1,
        steps: int = 5000,
        schedule: str = "constant",
        targets_per_step: int = 8,
        eot: EOT | None = None,
        seed: int = 0,
        checkpoint_every: int = 100,
        progress: bool = True,
    ) -> None:
        self.pgd = PGD(
            eps=eps,
            alpha=alpha,
            steps=steps,
            schedule=schedule,
            eot=eot,
            early_stop=False,
            seed=seed,
            checkpoint_every=checkpoint_every,
            progress=progress,
        )
        self.targets_per_step = targets_per_step

    def __call__(
        self,
        model: MLLMAdapter,
        image: torch.Tensor,
        prompts: str | Sequence[str],
        targets: Sequence[str],
        *,
        checkpoint: str | Path | None = None,
    ) -> AttackResult:
        """Optimise ``image`` ([3, H, W] in [0, 1]) over ``targets`` and ``prompts``."""
        objective = TargetObjective.of(targets, self.targets_per_step, self.pgd.seed)
        return self.pgd(model, image, prompts, objective, checkpoint=checkpoint)
