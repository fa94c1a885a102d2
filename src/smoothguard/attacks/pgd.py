"""Projected gradient descent on the model's own input space, through the adapter's
differentiable preprocessing.

``PGD`` attacks one image in [0, 1] pixel space: ``eps`` and ``alpha`` are in 1/255 pixel units
(L2: the L2 norm of the perturbation, times 255). The perturbation lives on the user's pixels at
their own size (resizing is part of the differentiable path), and the result is quantised to 8
bits before its final evaluation, as a saved PNG would be. ``WaveformPGD`` (``attacks/audio.py``)
does the same on a [-1, 1] waveform with amplitude units.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from smoothguard.answers import target_generated
from smoothguard.attacks import NORMS, SCHEDULES
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


class PGD:
    """Sign-gradient PGD in [0, 1] pixel space (Madry et al.; Qi et al.'s visual jailbreak).

    Parameters: ``eps`` budget (1/255 units; ``None`` = unconstrained), ``alpha`` step (1/255; the
    first step's size under a schedule), ``steps``, ``norm`` (``linf`` | ``l2``), ``schedule``
    (``cosine``: the step size decays from ``alpha`` to 0 along a half cosine; or ``constant``),
    ``random_start`` (uniform in the eps-ball; when unconstrained, a uniform random input, as Qi et al.),
    ``restarts`` (independent runs from different random starts; the lowest-loss one is kept),
    ``eot`` (average the loss over SmoothGuard's candidates: the adaptive attack), ``early_stop`` +
    ``check_every`` (stop once greedy decoding of the quantised input produces the target;
    single-target attacks only), ``seed``, ``checkpoint_every`` (steps between checkpoints when a
    checkpoint path is given), ``progress`` (the steps and the loss: a bar on a terminal, periodic lines
    on stderr otherwise). Of each run the lowest-loss iterate is kept, not the last.
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
        restarts: int = 1,
        eot: EOT | None = None,
        early_stop: bool = True,
        check_every: int = 10,
        seed: int = 0,
        checkpoint_every: int = 50,
        progress: bool = True,
    ) -> None:
        if eps is not None and (not _is_number(eps) or eps < 0):
            raise ConfigError(f"eps must be a number >= 0 (in {self.unit_name}) or None, got {eps!r}")
        if not _is_number(alpha) or alpha <= 0:
            raise ConfigError(f"alpha must be a number > 0 (in {self.unit_name}), got {alpha!r}")
        if norm not in NORMS:
            raise ConfigError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
        if schedule not in SCHEDULES:
            raise ConfigError(f"unknown step-size schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
        for name, value, minimum in (
            ("steps", steps, 0),
            ("restarts", restarts, 1),
            ("check_every", check_every, 1),
            ("checkpoint_every", checkpoint_every, 1),
        ):
            check_int(name, value, minimum=minimum)
        check_seed(seed)
        self.eps, self.alpha, self.steps, self.norm, self.schedule = eps, alpha, steps, norm, schedule
        self.restarts = restarts
        self.random_start, self.eot, self.early_stop, self.check_every = random_start, eot, early_stop, check_every
        self.seed, self.checkpoint_every, self.progress = seed, checkpoint_every, progress

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
        it exists when the attack starts, resumed from (it must come from the same run).
        """
        started = time.perf_counter()
        if model.modality != self.modality:
            raise UnsupportedError(
                f"{type(self).__name__} attacks {self.modality} models; {model.name} is {model.modality}"
            )
        prompts = [validate_prompt(p) for p in ([prompts] if isinstance(prompts, str) else prompts)]
        if not prompts:
            raise InputError("an attack needs at least one prompt")
        x0 = self._check_medium(medium).detach().float().to(model.device)
        texts = [model.prompt_text(p, x0) for p in prompts]
        identity = {key: model.describe()[key] for key in ("name", "family")}
        objectives = list(objective) if isinstance(objective, Sequence) else [objective] * len(prompts)
        if len(objectives) != len(prompts):
            raise ConfigError(f"{len(objectives)} objectives for {len(prompts)} prompts; give one per prompt or one")
        described = [o.describe() for o in objectives]
        run_config = {
            **self.config(),
            "objective": described[0] if len(set(map(json.dumps, described))) == 1 else described,
            "prompts": prompts,
            "model": identity,
        }
        target = _single_target(objectives[0]) if len({id(o) for o in objectives}) == 1 else None
        runs: list[_Run] = []
        for restart in range(self.restarts):
            path = None if checkpoint is None else _restart_path(Path(checkpoint), restart)
            runs.append(
                self._run(model, prompts, texts, x0, objectives, target, run_config, restart, path, max_new_tokens)
            )
            if runs[-1].reached:
                break
        kept = runs[-1] if runs[-1].reached else min(runs, key=lambda run: run.best_loss)
        final = self.finalize(kept.x, x0)
        with torch.no_grad():
            start_loss = self._loss(model, prompts, texts, x0, objectives, 0).item()
            end_loss = self._loss(model, prompts, texts, final, objectives, 0).item()
        answer = self._answer(model, prompts[0], final, max_new_tokens)
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
            target_generated=None if target is None else target_generated(answer, target),
            seconds=time.perf_counter() - started,
            config={**run_config, "steps": self.steps, "model": model.describe(), "versions": versions()},
        )

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
    def _run(
        self,
        model: MLLMAdapter,
        prompts: list[str],
        texts: list[dict[str, torch.Tensor]],
        x0: torch.Tensor,
        objectives: list[Objective],
        target: str | None,
        run_config: dict[str, Any],
        restart: int,
        checkpoint: Path | None,
        max_new_tokens: int,
    ) -> _Run:
        """One run from restart ``restart``'s start: ``steps`` sign-gradient steps (or until the target is
        reached), its loss curve and its lowest-loss iterate."""
        seed = self.seed if restart == 0 else step_seed(self.seed, restart, stream=4)
        run = self._start(x0, run_config, checkpoint, restart, seed)
        x = run.x if run.resume_from is None else run.resume_from
        bar = Progress(self.steps, "attack", "step", initial=len(run.losses), enabled=self.progress, leave=False)
        while not run.reached and len(run.losses) < self.steps:
            step = len(run.losses)
            x.requires_grad_(True)
            loss = self._loss(model, prompts, texts, x, objectives, step, seed)
            (grad,) = torch.autograd.grad(loss, x)
            run.record(loss.item(), x.detach())
            with torch.no_grad():
                x = self._project(self._step(x, grad, step), x0)
            bar.update(1)
            bar.set_postfix(loss=f"{run.losses[-1]:.4f}")
            done = len(run.losses)
            if self.early_stop and target is not None and done % self.check_every == 0:
                answer = self._answer(model, prompts[0], self.finalize(x.detach(), x0), max_new_tokens)
                if target_generated(answer, target):
                    run.reach(x.detach())
            if checkpoint is not None and (done % self.checkpoint_every == 0 or done == self.steps or run.reached):
                self._save_checkpoint(checkpoint, x, x0, run, run_config, restart)
        bar.close()
        return run

    def _check_medium(self, medium: torch.Tensor) -> torch.Tensor:
        if not isinstance(medium, torch.Tensor) or medium.dim() != 3 or medium.shape[0] != 3:
            raise InputError("PGD attacks one image given as a [3, H, W] tensor in [0, 1] (see inputs.load_image)")
        return _check_range(medium, self.bounds, "image pixels")

    def _loss(
        self,
        model: MLLMAdapter,
        prompts: list[str],
        texts: list[dict[str, torch.Tensor]],
        x: torch.Tensor,
        objectives: list[Objective],
        step: int,
        seed: int | None = None,
    ) -> torch.Tensor:
        """The objective at ``x``, averaged over the prompts and the step's media (EOT's candidates, drawn
        from ``seed``, default the attack's own)."""
        seed = self.seed if seed is None else seed
        media = self.eot.media(model, x, seed, step) if self.eot else [model.preprocess(x.unsqueeze(0))]
        # One forward pass per prompt over all of the step's media (the EOT samples), averaged over both.
        losses = [
            objective(model, prompt, text, media, step)
            for prompt, text, objective in zip(prompts, texts, objectives, strict=True)
        ]
        return torch.stack(losses).mean()

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

    def _start(
        self, x0: torch.Tensor, run_config: dict[str, Any], checkpoint: Path | None, restart: int, seed: int
    ) -> _Run:
        if checkpoint is not None and checkpoint.exists():
            return self._load_checkpoint(checkpoint, x0, run_config, restart)
        if not self.random_start:
            return _Run(x0.clone())
        generator = torch.Generator().manual_seed(step_seed(seed, 0, stream=3))
        if self.eps is None:  # Qi et al.'s unconstrained attack starts from uniform noise
            low, high = self.bounds
            return _Run((low + (high - low) * torch.rand(x0.shape, generator=generator)).to(x0.device))
        eps = self.eps * self.unit
        noise = torch.rand(x0.shape, generator=generator) * 2 - 1
        if self.norm == "l2":
            noise = noise / noise.norm().clamp_min(1e-12) * torch.rand((), generator=generator)
        return _Run(self._project(x0 + eps * noise.to(x0.device), x0))

    def _answer(self, model: MLLMAdapter, prompt: str, x: torch.Tensor, max_new_tokens: int) -> str:
        return model.generate([model.encode(prompt, x)], max_new_tokens=max_new_tokens)[0]

    def _save_checkpoint(
        self, path: Path, x: torch.Tensor, x0: torch.Tensor, run: _Run, run_config: dict, restart: int
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

    def _load_checkpoint(self, path: Path, x0: torch.Tensor, run_config: dict, restart: int) -> _Run:
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
        return _Run(tensors["best"].to(x0.device), losses, best_loss, best_step, reached, tensors["x"].to(x0.device))


@dataclass
class _Run:
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


def _check_range(medium: torch.Tensor, bounds: tuple[float, float], what: str) -> torch.Tensor:
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


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
