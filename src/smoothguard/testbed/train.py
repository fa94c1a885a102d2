"""Training of the testbed model: AdamW with warm-up and cosine decay, every question weighted
equally (a one-token "yes" counts as much as a ten-token description; half of each question's
weight on its deciding first token), a curriculum that starts with one object per scene,
resumable checkpoints, and a fast held-out probe during training."""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from smoothguard.errors import ConfigError
from smoothguard.models.image_ops import ClipStylePreprocessor
from smoothguard.progress import Progress
from smoothguard.testbed.data import IGNORE, ConversationEncoder, held_out_scenes, scene_pixels, training_batch
from smoothguard.testbed.model import ModelSize, build_model, build_processor
from smoothguard.testbed.tasks import NEGATIVE_KINDS, attribute_turn, count_turn, existence_turns, restricted_turn

STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    curriculum: float = 0.15  # share of steps that show one object per scene
    augment_noise: float = 0.02  # max std of sensor noise on half the images (pixel units)
    seed: int = 0
    checkpoint_every: int = 200
    probe_every: int = 250
    probe_scenes: int = 96


def turn_weighted_loss(logits: torch.Tensor, labels: torch.Tensor, turn_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy where every answered turn has weight 1, averaged over turns: half of it on the
    turn's first answer token (the decision: yes/no, the count, refuse/comply), half shared by all
    its tokens. Without this a seven-token refusal leaves its one deciding token 1/80 of the loss.
    ``logits`` [B, L, V]; ``labels`` / ``turn_ids`` [B, L] (unshifted)."""
    first = (labels != IGNORE) & (torch.nn.functional.pad(labels[:, :-1], (1, 0), value=IGNORE) == IGNORE)
    logits, labels, turn_ids, first = logits[:, :-1], labels[:, 1:], turn_ids[:, 1:], first[:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    mask = labels != IGNORE
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(labels)
    keys = (rows * 1000 + turn_ids)[mask]
    _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    weights = 0.5 / counts[inverse].float() + 0.5 * first[mask].float()
    return (losses[mask] * weights).sum() / counts.numel()


def learning_rate(config: TrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train(
    out_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    *,
    shape: ModelSize = ModelSize(),  # noqa: B008
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Train (or resume training) into ``out_dir``; the finished model is exported to
    ``out_dir/model`` (float16 safetensors + processor). Returns that folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = build_processor()
    model = build_model(processor, shape, seed=config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict] = []
    start = 0
    state_path = out_dir / STATE_FILE
    settings = {"config": asdict(config), "shape": asdict(shape)}
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        if json.loads(state["settings"]) != settings:
            raise ConfigError(f"{state_path} was trained with other settings; use another folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), json.loads(state["history"])
        log(f"resuming at step {start}")
    pixel_path = ClipStylePreprocessor.from_image_processor(processor.image_processor)
    encoder = ConversationEncoder(processor)
    image_tokens = model.config.image_seq_length
    model.train()
    bar = Progress(config.steps, "train", "step", initial=start, enabled=progress)
    started = time.perf_counter()
    for step in range(start, config.steps):
        max_objects = 1 if step < config.curriculum * config.steps else 3
        batch = training_batch(
            encoder,
            image_tokens,
            seed=config.seed,
            step=step,
            batch_size=config.batch_size,
            max_objects=max_objects,
            augment_noise=config.augment_noise,
        )
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=pixel_path(batch["pixels"]),
        ).logits
        loss = turn_weighted_loss(logits, batch["labels"], batch["turn_ids"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        done = step + 1
        if done % config.probe_every == 0 or done == config.steps:
            scores = probe(model, processor, pixel_path, config.probe_scenes)
            history.append({"step": done, "loss": loss.item(), "seconds": time.perf_counter() - started, **scores})
            log(f"step {done}: loss {loss.item():.4f} " + " ".join(f"{k} {v:.2f}" for k, v in scores.items()))
            model.train()
        if done % config.checkpoint_every == 0 or done == config.steps:
            _save_state(state_path, model, optimizer, done, history, settings)
    bar.close()
    return export(model, processor, out_dir / "model", history)


def _save_state(path: Path, model, optimizer, step: int, history: list[dict], settings: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "history": json.dumps(history),
            "settings": json.dumps(settings),
        },
        partial,
    )
    partial.replace(path)


def export(model, processor, folder: Path, history: list[dict]) -> Path:
    """Save the model as float16 safetensors with its processor and training history."""
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().to(torch.float16).save_pretrained(folder)
    model.to(torch.float32)
    processor.save_pretrained(folder)
    (folder / "training_history.json").write_text(json.dumps(history, indent=1))
    return folder


@torch.no_grad()
def probe(model, processor, pixel_path: ClipStylePreprocessor, count: int) -> dict[str, float]:
    """Held-out first-answer-token accuracy per task / negative kind (single-turn prompts): a fast
    proxy of greedy accuracy for the one-token decisions (yes/no, counts, colours, refusal)."""
    model.eval()
    encoder = ConversationEncoder(processor)
    rng = random.Random(0)
    rows: list[tuple[str, torch.Tensor, list[int], int]] = []
    for scene in held_out_scenes(count):
        pixels = scene_pixels(scene)
        turns = existence_turns(scene, rng, rng.choice(NEGATIVE_KINDS))
        turns += [t for t in (attribute_turn(scene, rng), restricted_turn(scene, rng)) if t is not None]
        turns.append(count_turn(scene))
        for turn in turns:
            encoded = encoder.encode([turn], model.config.image_seq_length)
            prompt = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label == IGNORE]
            first = encoded.labels[len(prompt)]
            key = (
                f"existence-{turn.kind}"
                if turn.task == "existence"
                else (f"restricted-{turn.kind}" if turn.task == "restricted" else turn.task)
            )
            rows.append((key, pixels, prompt, first))
    correct: dict[str, list[bool]] = defaultdict(list)
    for start in range(0, len(rows), 64):
        chunk = rows[start : start + 64]
        width = max(len(r[2]) for r in chunk)
        ids = torch.full((len(chunk), width), processor.tokenizer.pad_token_id)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (_, _, prompt, _) in enumerate(chunk):
            ids[i, : len(prompt)] = torch.tensor(prompt)
            mask[i, : len(prompt)] = 1
        logits = model(
            input_ids=ids, attention_mask=mask, pixel_values=pixel_path(torch.stack([r[1] for r in chunk]))
        ).logits
        last = mask.sum(dim=1) - 1
        predicted = logits[torch.arange(len(chunk)), last].argmax(dim=-1)
        for (key, _, _, first), guess in zip(chunk, predicted.tolist(), strict=True):
            correct[key].append(guess == first)
    return {key: sum(v) / len(v) for key, v in sorted(correct.items())}
