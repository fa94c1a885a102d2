"""What an attack minimises: targeted (make the model say one of the targets) or untargeted (push
it away from a reference answer). Objectives are stateless per step: the targets of step ``s`` are
drawn from ``(seed, s)``, so a resumed run sees the same targets as an uninterrupted one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from smoothguard.attacks.eot import step_seed
from smoothguard.attacks.loss import target_losses
from smoothguard.errors import ConfigError, check_int
from smoothguard.models.base import MLLMAdapter

#: One medium's model inputs, or several (the EOT samples of a step), answered in one batch.
Media = dict[str, torch.Tensor] | Sequence[dict[str, torch.Tensor]]


class Objective(Protocol):
    """A scalar to minimise for one prompt (``prompt``, and its ids ``text`` from ``adapter.prompt_text``)
    and one or more (possibly noisy) media at attack step ``step`` (averaged over the media)."""

    def __call__(
        self, adapter: MLLMAdapter, prompt: str, text: dict[str, torch.Tensor], media: Media, step: int
    ) -> torch.Tensor: ...

    def describe(self) -> dict[str, object]: ...


@dataclass(frozen=True)
class TargetObjective:
    """Teacher-forced cross-entropy of target sentences, ``targets_per_step`` of them sampled per
    step without replacement (Qi et al. sample 8 per step from their corpus)."""

    targets: tuple[str, ...]
    targets_per_step: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.targets or any(not isinstance(t, str) or not t.strip() for t in self.targets):
            raise ConfigError("targets must be a non-empty list of non-empty strings")
        check_int("targets_per_step", self.targets_per_step, minimum=1)

    @classmethod
    def of(cls, targets: Sequence[str] | str, targets_per_step: int = 8, seed: int = 0) -> TargetObjective:
        return cls((targets,) if isinstance(targets, str) else tuple(targets), targets_per_step, seed)

    def targets_at(self, step: int) -> list[str]:
        """The targets used at ``step``: all of them if there are at most ``targets_per_step``."""
        if len(self.targets) <= self.targets_per_step:
            return list(self.targets)
        generator = torch.Generator().manual_seed(step_seed(self.seed, step, stream=2))
        order = torch.randperm(len(self.targets), generator=generator)[: self.targets_per_step]
        return [self.targets[i] for i in order.tolist()]

    def __call__(
        self, adapter: MLLMAdapter, prompt: str, text: dict[str, torch.Tensor], media: Media, step: int
    ) -> torch.Tensor:
        return target_losses(adapter, prompt, text, media, self.targets_at(step)).mean()

    def describe(self) -> dict[str, object]:
        return {
            "kind": "targeted",
            "targets": list(self.targets),
            "targets_per_step": self.targets_per_step,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class AwayObjective:
    """Untargeted: maximise the cross-entropy of ``reference`` (the clean answer), i.e. minimise
    its negative."""

    reference: str

    def __post_init__(self) -> None:
        if not self.reference.strip():
            raise ConfigError("the reference answer of an untargeted attack must not be empty")

    def __call__(
        self, adapter: MLLMAdapter, prompt: str, text: dict[str, torch.Tensor], media: Media, step: int
    ) -> torch.Tensor:
        return -target_losses(adapter, prompt, text, media, [self.reference]).mean()

    def describe(self) -> dict[str, object]:
        return {"kind": "untargeted", "reference": self.reference}
