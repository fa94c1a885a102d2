"""Qi et al.'s universal visual jailbreak (AAAI 2024): one image optimised so that the model
continues with sentences of a target corpus, whatever the prompt; and the lossless saving of any
adversarial input with a JSON sidecar."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from smoothguard.attacks.eot import EOT
from smoothguard.attacks.objectives import TargetObjective
from smoothguard.attacks.pgd import PGD, AttackResult
from smoothguard.errors import ConfigError, InputError
from smoothguard.models.base import MLLMAdapter
from smoothguard.models.image import to_uint8_image

IMAGE_SUFFIXES = (".png", ".bmp")
AUDIO_SUFFIXES = (".wav",)


def load_targets(path: str | Path) -> list[str]:
    """Target sentences from a text file (one per line) or a CSV file (first column of each row,
    as Qi et al.'s corpus); blank lines are skipped."""
    return _read_sentences(path, "target")


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line) or a CSV file (first column)."""
    return _read_sentences(path, "prompt")


def _read_sentences(path: str | Path, what: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file {path}: no such file")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            if path.suffix.lower() == ".csv":
                rows = [row[0] for row in csv.reader(handle) if row]
            else:
                rows = handle.read().splitlines()
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{what} file {path}: not UTF-8 text or CSV ({exc})") from exc
    sentences = [row.strip() for row in rows if row.strip()]
    if not sentences:
        raise InputError(f"{what} file {path} holds no {what}s")
    return sentences


def check_output_path(path: str | Path, modality: str) -> Path:
    """``path`` if its format is lossless for ``modality`` (image: PNG/BMP; audio: WAV); check it
    before a long attack, not after."""
    path = Path(path)
    allowed = AUDIO_SUFFIXES if modality == "audio" else IMAGE_SUFFIXES
    if path.suffix.lower() not in allowed:
        raise ConfigError(f"save the adversarial input as {' or '.join(allowed)} (lossless), not {path.name}")
    return path


def save_adversarial(result: AttackResult, path: str | Path) -> Path:
    """Write ``result.adversarial`` losslessly (image: PNG/BMP, 8 bits; audio: float32 WAV at the
    model's sampling rate) and ``result.to_dict()`` plus the file's sha256 to a JSON
    sidecar beside it (``adv.png`` -> ``adv.png.json``). Returns the sidecar's path."""
    is_audio = result.adversarial.dim() == 1
    path = check_output_path(path, "audio" if is_audio else "image")
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_audio:
        rate = result.config.get("model", {}).get("sampling_rate")
        if not rate:
            raise ConfigError("the attack result does not record its sampling rate")
        sf.write(path, result.adversarial.numpy().astype(np.float32), rate, subtype="FLOAT")
    else:
        Image.fromarray(to_uint8_image(result.adversarial)).save(path)
    sidecar = path.with_name(path.name + ".json")
    record = {**result.to_dict(), "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    sidecar.write_text(json.dumps(record, indent=2))
    return sidecar


class UniversalJailbreak:
    """Qi et al.'s attack: sign-gradient PGD (``eps`` and ``alpha`` in 1/255; ``None`` =
    unconstrained, started from uniform noise), ``targets_per_step`` corpus sentences sampled per
    step, losses averaged over the prompts, no early stop; checkpoints every ``checkpoint_every``
    steps. Paper settings: eps 16/32/64 or unconstrained, alpha 1, 5000 steps, 8 targets per step.
    """

    def __init__(
        self,
        *,
        eps: float | None = 32,
        alpha: float = 1,
        steps: int = 5000,
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
