"""Attack file I/O: target and prompt corpora in, adversarial inputs out (lossless, with a JSON sidecar)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from smoothguard.attacks.base import AttackResult
from smoothguard.errors import ConfigError, InputError
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
