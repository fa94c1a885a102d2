"""What every attack shares: its result record, one run's bookkeeping (the loss curve, the kept iterate, the
early stop), restarts, checkpoints and progress (in the manner of torchattacks' ``Attack``).

An attack subclasses :class:`Attack` and supplies its own optimisation: ``_start`` (the first iterate),
``_iterate`` (one step: the loss at an iterate and the next one), ``finalize`` (the input as saved),
``_check_medium`` and ``config``; :meth:`Attack.__call__` does the rest.
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from smoothguard.answers import target_generated
from smoothguard.attacks.eot import EOT, step_seed
from smoothguard.attacks.objectives import Objective, TargetObjective
from smoothguard.errors import ConfigError, InputError, UnsupportedError, check_int, check_seed
from smoothguard.inputs import validate_prompt
from smoothguard.models.base import MLLMAdapter
from smoothguard.progress import Progress
from smoothguard.provenance import versions


@dataclass
class AttackResult:
    """An attack's output and record. ``adversarial`` is the kept iterate (the lowest-loss one, or the one
    that reached the target under early stopping), images quantised to 8 bits; ``losses`` the objective
    before each step of the kept run (its loss curve), ``best_step`` / ``best_loss`` the kept iterate's
    step and loss, ``restart`` the kept run among ``restart_best_losses`` (each run's best loss);
    ``start_loss`` / ``end_loss`` the objective of the clean and of the final input (step 0's draws);
    ``linf`` / ``l2`` the achieved perturbation norms in the attack's units (1/255 for images,
    amplitude for audio)."""

    adversarial: torch.Tensor
    losses: list[float]
    start_loss: float
    end_loss: float
    steps: int
    best_step: int
    best_loss: float
    restart: int
    restart_best_losses: list[float]
    linf: float
    l2: float
    answer: str
    target_generated: bool | None
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (without the tensor)."""
        data = asdict(self)
        data.pop("adversarial")
        return data


@dataclass
class Problem:
    """What one attack call optimises: ``x0`` (the clean medium on the model's device), the prompts, their
    encoded ``texts``, one objective per prompt, the ``target`` text when early stopping can check one, and
    ``config``, the settings a checkpoint must match."""

    model: MLLMAdapter
    x0: torch.Tensor
    prompts: list[str]
    texts: list[dict[str, torch.Tensor]]
    objectives: list[Objective]
    target: str | None
    config: dict[str, Any]
    max_new_tokens: int


class Attack(ABC):
    """The bookkeeping of a gradient attack on one medium (see the module docstring).

    Shared settings: ``steps``, ``restarts`` (independent runs from different seeded starts; the lowest-loss
    one is kept), ``eot`` (average the loss over SmoothGuard's candidates: the adaptive attack),
    ``early_stop`` + ``check_every`` (stop once greedy decoding of the finalized input produces the target;
    single-target attacks only), ``seed``, ``checkpoint_every`` (steps between checkpoints when a checkpoint
    path is given), ``progress`` (the steps and the loss: a bar on a terminal, periodic lines on stderr
    otherwise). Of each run the lowest-loss iterate is kept, not the last.
    """

    modality: ClassVar[str]
    bounds: ClassVar[tuple[float, float]]
    #: The attack's units (eps, alpha, linf, l2) in the medium's own: 1/255 for pixels.
    unit: ClassVar[float]

    def __init__(
        self,
        *,
        steps: int,
        restarts: int = 1,
        eot: EOT | None = None,
        early_stop: bool = True,
        check_every: int = 10,
        seed: int = 0,
        checkpoint_every: int = 50,
        progress: bool = True,
    ) -> None:
        for name, value, minimum in (
            ("steps", steps, 0),
            ("restarts", restarts, 1),
            ("check_every", check_every, 1),
            ("checkpoint_every", checkpoint_every, 1),
        ):
            check_int(name, value, minimum=minimum)
        check_seed(seed)
        self.steps, self.restarts, self.eot = steps, restarts, eot
        self.early_stop, self.check_every = early_stop, check_every
        self.seed, self.checkpoint_every, self.progress = seed, checkpoint_every, progress

    @property
    @abstractmethod
    def unit_name(self) -> str:
        """The name of ``unit``, for messages."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The hyperparameters that define a run (a checkpoint must match them to resume)."""

    @abstractmethod
    def finalize(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The input as it will be saved."""

    @abstractmethod
    def _check_medium(self, medium: torch.Tensor) -> torch.Tensor:
        """``medium`` if it has the shape and range the attack takes; InputError otherwise."""

    @abstractmethod
    def _start(self, x0: torch.Tensor, seed: int) -> torch.Tensor:
        """The first iterate of a fresh run drawn from ``seed``."""

    @abstractmethod
    def _iterate(self, problem: Problem, x: torch.Tensor, step: int, seed: int) -> tuple[float, torch.Tensor]:
        """Step ``step`` from ``x``: the objective at ``x`` and the next iterate."""

    # -------------------------------------------------------------------- public
    def __call__(
        self,
        model: MLLMAdapter,
        medium: torch.Tensor,
        prompts: str | Sequence[str],
        objective: Objective | Sequence[Objective],
        *,
        checkpoint: str | Path | None = None,
        max_new_tokens: int = 64,
    ) -> AttackResult:
        """Attack ``medium`` (pixels [3, H, W] in [0, 1], or a waveform [T] for ``WaveformPGD``)
        so that ``objective`` falls for every prompt in ``prompts`` (losses averaged over prompts);
        a sequence of objectives gives each prompt its own (e.g. its own target answer).

        ``checkpoint``: a ``.safetensors`` path; written every ``checkpoint_every`` steps and, if
        it exists when the attack starts, resumed from (it must come from the same run; restart r > 0
        checkpoints to ``<stem>.r<r><suffix>`` beside it).
        """
        started = time.perf_counter()
        problem = self._problem(model, medium, prompts, objective, max_new_tokens)
        runs: list[Run] = []
        for restart in range(self.restarts):
            path = None if checkpoint is None else _restart_path(Path(checkpoint), restart)
            runs.append(self._run(problem, restart, path))
            if runs[-1].reached:
                break
        kept = runs[-1] if runs[-1].reached else min(runs, key=lambda run: run.best_loss)
        x0 = problem.x0
        final = self.finalize(kept.x, x0)
        with torch.no_grad():
            start_loss = self._loss(problem, x0, 0).item()
            end_loss = self._loss(problem, final, 0).item()
        answer = self._answer(model, problem.prompts[0], final, max_new_tokens)
        delta = (final - x0) / self.unit
        # A run without steps kept its start: its only loss is the final input's.
        best_losses = [run.best_loss if run.losses else end_loss for run in runs]
        return AttackResult(
            adversarial=final.cpu(),
            losses=kept.losses,
            start_loss=start_loss,
            end_loss=end_loss,
            steps=len(kept.losses),
            best_step=kept.best_step,
            best_loss=best_losses[runs.index(kept)],
            restart=runs.index(kept),
            restart_best_losses=best_losses,
            linf=round(delta.abs().max().item(), 4),  # 8-bit results: whole 1/255 steps up to float error
            l2=round(delta.norm().item(), 4),
            answer=answer,
            target_generated=None if problem.target is None else target_generated(answer, problem.target),
            seconds=time.perf_counter() - started,
            config={**problem.config, "steps": self.steps, "model": model.describe(), "versions": versions()},
        )

    # ------------------------------------------------------------------ internal
    def _problem(
        self,
        model: MLLMAdapter,
        medium: torch.Tensor,
        prompts: str | Sequence[str],
        objective: Objective | Sequence[Objective],
        max_new_tokens: int,
    ) -> Problem:
        if model.modality != self.modality:
            raise UnsupportedError(
                f"{type(self).__name__} attacks {self.modality} models; {model.name} is {model.modality}"
            )
        prompts = [validate_prompt(p) for p in ([prompts] if isinstance(prompts, str) else prompts)]
        if not prompts:
            raise InputError("an attack needs at least one prompt")
        x0 = self._check_medium(medium).detach().float().to(model.device)
        objectives = list(objective) if isinstance(objective, Sequence) else [objective] * len(prompts)
        if len(objectives) != len(prompts):
            raise ConfigError(f"{len(objectives)} objectives for {len(prompts)} prompts; give one per prompt or one")
        described = [o.describe() for o in objectives]
        config = {
            **self.config(),
            "objective": described[0] if len(set(map(json.dumps, described))) == 1 else described,
            "prompts": prompts,
            "model": {key: model.describe()[key] for key in ("name", "family")},
        }
        target = _single_target(objectives[0]) if len({id(o) for o in objectives}) == 1 else None
        texts = [model.prompt_text(p, x0) for p in prompts]
        return Problem(model, x0, prompts, texts, objectives, target, config, max_new_tokens)

    def _run(self, problem: Problem, restart: int, checkpoint: Path | None) -> Run:
        """One run from restart ``restart``'s start: ``steps`` steps (or until the target is reached), its
        loss curve and its lowest-loss iterate."""
        seed = self.seed if restart == 0 else step_seed(self.seed, restart, stream=4)
        run = self._begin(problem.x0, problem.config, checkpoint, restart, seed)
        x = run.x if run.resume_from is None else run.resume_from
        bar = Progress(self.steps, "attack", "step", initial=len(run.losses), enabled=self.progress, leave=False)
        while not run.reached and len(run.losses) < self.steps:
            loss, following = self._iterate(problem, x, len(run.losses), seed)
            run.record(loss, x.detach())
            x = following
            bar.update(1)
            bar.set_postfix(loss=f"{run.losses[-1]:.4f}")
            done = len(run.losses)
            if self.early_stop and problem.target is not None and done % self.check_every == 0:
                final = self.finalize(x.detach(), problem.x0)
                answer = self._answer(problem.model, problem.prompts[0], final, problem.max_new_tokens)
                if target_generated(answer, problem.target):
                    run.reach(x.detach())
            if checkpoint is not None and (done % self.checkpoint_every == 0 or done == self.steps or run.reached):
                self._save_checkpoint(checkpoint, x, problem.x0, run, problem.config, restart)
        bar.close()
        return run

    def _begin(self, x0: torch.Tensor, config: dict[str, Any], checkpoint: Path | None, restart: int, seed: int) -> Run:
        """The run resumed from ``checkpoint`` when it exists, else a fresh one from :meth:`_start`."""
        if checkpoint is not None and checkpoint.exists():
            return self._load_checkpoint(checkpoint, x0, config, restart)
        return Run(self._start(x0, seed))

    def _loss(self, problem: Problem, x: torch.Tensor, step: int, seed: int | None = None) -> torch.Tensor:
        """The objective at ``x``, averaged over the prompts and the step's media (EOT's candidates, drawn
        from ``seed``, default the attack's own)."""
        seed = self.seed if seed is None else seed
        model = problem.model
        media = self.eot.media(model, x, seed, step) if self.eot else [model.preprocess(x.unsqueeze(0))]
        # One forward pass per prompt over all of the step's media (the EOT samples), averaged over both.
        losses = [
            objective(model, prompt, text, media, step)
            for prompt, text, objective in zip(problem.prompts, problem.texts, problem.objectives, strict=True)
        ]
        return torch.stack(losses).mean()

    def _answer(self, model: MLLMAdapter, prompt: str, x: torch.Tensor, max_new_tokens: int) -> str:
        return model.generate([model.encode(prompt, x)], max_new_tokens=max_new_tokens)[0]

    def _save_checkpoint(
        self, path: Path, x: torch.Tensor, x0: torch.Tensor, run: Run, run_config: dict, restart: int
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        metadata = {
            "losses": json.dumps(run.losses),
            "config": json.dumps(run_config, sort_keys=True),
            "restart": str(restart),
            "best_step": str(run.best_step),
            "reached": json.dumps(run.reached),
        }
        tensors = {"x": x.detach(), "x0": x0, "best": run.x}
        save_file({key: value.cpu().contiguous() for key, value in tensors.items()}, str(partial), metadata=metadata)
        partial.replace(path)  # atomic: a run killed mid-write leaves the previous checkpoint intact

    def _load_checkpoint(self, path: Path, x0: torch.Tensor, run_config: dict, restart: int) -> Run:
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in ("x", "x0", "best")}
            losses = [float(v) for v in json.loads(metadata["losses"])]
            saved_config = json.loads(metadata["config"])
            saved_restart, best_step = int(metadata["restart"]), int(metadata["best_step"])
            reached = bool(json.loads(metadata["reached"]))
        except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"checkpoint {path} is unreadable ({exc}); delete it to start over") from exc
        if saved_config != json.loads(json.dumps(run_config, sort_keys=True)) or saved_restart != restart:
            raise ConfigError(f"checkpoint {path} belongs to another run (different settings); use another path")
        if tensors["x0"].shape != x0.shape or not torch.equal(tensors["x0"], x0.cpu()):
            raise ConfigError(f"checkpoint {path} was made from another input; use another path")
        if len(losses) > self.steps:
            raise ConfigError(f"checkpoint {path} already ran {len(losses)} steps, more than steps={self.steps}")
        best_loss = min(losses) if losses else math.inf
        return Run(tensors["best"].to(x0.device), losses, best_loss, best_step, reached, tensors["x"].to(x0.device))


@dataclass
class Run:
    """One run's state: its loss curve, and ``x``, the iterate it keeps (the lowest-loss one seen, at step
    ``best_step``; or the one that reached the target, after the last step); ``best_loss``: the lowest loss
    seen; ``resume_from``: where the next step starts when resumed."""

    x: torch.Tensor
    losses: list[float] = field(default_factory=list)
    best_loss: float = math.inf
    best_step: int = 0
    reached: bool = False
    resume_from: torch.Tensor | None = None

    def record(self, loss: float, x: torch.Tensor) -> None:
        """The loss at iterate ``x`` (before its step); ``x`` is kept when it is the lowest so far."""
        if loss < self.best_loss:
            self.x, self.best_loss, self.best_step = x, loss, len(self.losses)
        self.losses.append(loss)

    def reach(self, x: torch.Tensor) -> None:
        """``x`` (the iterate after the last step) produced the target: keep it and stop."""
        self.x, self.reached, self.best_step = x, True, len(self.losses)


def _restart_path(path: Path, restart: int) -> Path:
    """Restart 0 checkpoints to ``path``; restart r to ``<stem>.r<r><suffix>`` beside it."""
    return path if restart == 0 else path.with_name(f"{path.stem}.r{restart}{path.suffix}")


def check_range(medium: torch.Tensor, bounds: tuple[float, float], what: str) -> torch.Tensor:
    """``medium`` if it is finite and within ``bounds``; InputError otherwise."""
    if not torch.isfinite(medium).all():
        raise InputError(f"{what} contain NaN or infinite values")
    low, high = bounds
    if medium.min() < low or medium.max() > high:
        raise InputError(f"{what} must lie in [{low:g}, {high:g}]; got [{medium.min():.4g}, {medium.max():.4g}]")
    return medium


def _single_target(objective: Objective) -> str | None:
    if isinstance(objective, TargetObjective) and len(objective.targets) == 1:
        return objective.targets[0]
    return None
