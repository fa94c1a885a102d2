"""Training of a testbed model in two stages, resumable, with a fast held-out probe:

1. vision pretraining (``vision_steps``): the CLIP tower up to the layer the projector reads, with
   linear heads for each patch's colour and shape (every patch of an object labelled with the
   object's shape), the object count and the badge, on scenes whose pairs are drawn uniformly;
2. LLaVA training (``steps``): the whole model on conversations about scenes, the tower at
   ``tower_lr`` times the learning rate; AdamW with warm-up and cosine decay, every question
   weighted equally (a one-token "yes" counts as much as a ten-token description; half of each
   question's weight on its deciding first token), a curriculum that starts with one object per scene.
"""

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
from smoothguard.testbed.data import (
    IGNORE,
    MAX_OBJECTS,
    PATCH_COLORS,
    PATCH_SHAPES,
    ConversationEncoder,
    held_out_scenes,
    patch_targets,
    scene_pixels,
    training_batch,
    vision_batch,
)
from smoothguard.testbed.model import ModelSize, build_model, build_processor
from smoothguard.testbed.scenes import POPULAR_WEIGHT
from smoothguard.testbed.tasks import NEGATIVE_KINDS, attribute_turn, count_turn, existence_turns, restricted_turn

STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class TrainConfig:
    """``steps``: LLaVA-stage steps, after ``vision_steps`` of vision pretraining (0: none)."""

    steps: int = 1500
    vision_steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-3
    vision_lr: float = 2e-3
    tower_lr: float = 0.3  # the vision tower's learning rate in the LLaVA stage, relative to lr
    warmup: int = 100
    weight_decay: float = 0.01
    curriculum: float = 0.15  # share of LLaVA steps that show one object per scene
    augment_noise: float = 0.03  # max std of sensor noise on half the images (pixel units)
    popular_weight: float = POPULAR_WEIGHT
    pair_loss: bool = False  # also predict each patch's (colour, shape) pair as one class
    seed: int = 0
    checkpoint_every: int = 200
    probe_every: int = 250
    probe_scenes: int = 96


class VisionHeads(torch.nn.Module):
    """Linear read-outs of the tower's projector-facing layer: per patch its colour and shape class;
    per object (mean over the patches it owns) its shape; per image (mean over patches) the object
    count and the badge. The per-object shape makes the tower gather an object's outline, which
    no single patch of it shows."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.color = torch.nn.Linear(hidden, len(PATCH_COLORS))
        self.shape = torch.nn.Linear(hidden, len(PATCH_SHAPES))
        self.pair = torch.nn.Linear(hidden, 1 + (len(PATCH_COLORS) - 2) * (len(PATCH_SHAPES) - 1))
        self.object_shape = torch.nn.Linear(hidden, len(PATCH_SHAPES))
        self.count = torch.nn.Linear(hidden, 4)
        self.badge = torch.nn.Linear(hidden, 2)

    def forward(self, features: torch.Tensor, owners: torch.Tensor) -> dict[str, torch.Tensor]:
        """``features`` [B, P, H]; ``owners`` [B, P] (object index per patch, -1 none)."""
        pooled = features.mean(dim=1)
        slots = torch.arange(MAX_OBJECTS, device=owners.device)
        membership = (owners.unsqueeze(1) == slots[None, :, None]).float()  # [B, objects, P]
        per_object = membership @ features / membership.sum(dim=-1, keepdim=True).clamp(min=1)
        return {
            "colors": self.color(features),
            "shapes": self.shape(features),
            "pairs": self.pair(features),
            "object_shapes": self.object_shape(per_object),
            "count": self.count(pooled),
            "badge": self.badge(pooled),
        }


def patch_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision features the projector reads: [B, P, hidden] (LLaVA's layer, CLS dropped)."""
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    return hidden[model.config.vision_feature_layer][:, 1:]


def vision_loss(
    outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], *, pairs: bool = False
) -> torch.Tensor:
    """Mean of the cross-entropies: per-patch colour and shape, per-object shape, count, badge, and
    with ``pairs`` the per-patch (colour, shape) pair as one of 12 classes (0: no object)."""
    targets = dict(batch)
    keys = ["colors", "shapes", "object_shapes"]
    if pairs:
        owned = batch["shapes"] > 0
        targets["pairs"] = torch.where(owned, (batch["colors"] - 1) * (len(PATCH_SHAPES) - 1) + batch["shapes"], 0)
        keys.append("pairs")
    losses = [F.cross_entropy(outputs[k].flatten(0, 1), targets[k].flatten(), ignore_index=IGNORE) for k in keys]
    losses += [F.cross_entropy(outputs[key], batch[key]) for key in ("count", "badge")]
    return sum(losses) / len(losses)


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


def learning_rate(base: float, warmup: int, total: int, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


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
    heads = VisionHeads(shape.vision_hidden)
    history: list[dict] = []
    start = 0
    state_path = out_dir / STATE_FILE
    settings = {"config": asdict(config), "shape": asdict(shape)}
    state = None
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        if json.loads(state["settings"]) != settings:
            raise ConfigError(f"{state_path} was trained with other settings; use another folder")
        model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
        start, history = int(state["step"]), json.loads(state["history"])
        log(f"resuming at step {start}")
    total = config.vision_steps + config.steps
    optimizer = _optimizer(model, heads, config, vision=start < config.vision_steps)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    pixel_path = ClipStylePreprocessor.from_image_processor(processor.image_processor)
    encoder = ConversationEncoder(processor)
    image_tokens = model.config.image_seq_length
    model.train()
    bar = Progress(total, "train", "step", initial=start, enabled=progress)
    started = time.perf_counter()
    for step in range(start, total):
        vision = step < config.vision_steps
        if step == config.vision_steps and step > 0:
            optimizer = _optimizer(model, heads, config, vision=False)
        if vision:
            batch = vision_batch(
                seed=config.seed,
                step=step,
                batch_size=config.batch_size,
                patch_size=shape.patch_size,
                augment_noise=config.augment_noise,
            )
            lr = learning_rate(config.vision_lr, config.warmup, config.vision_steps, step)
            outputs = heads(patch_features(model, pixel_path(batch["pixels"])), batch["owners"])
            loss = vision_loss(outputs, batch, pairs=config.pair_loss)
        else:
            llava_step = step - config.vision_steps
            batch = training_batch(
                encoder,
                image_tokens,
                seed=config.seed,
                step=llava_step,
                batch_size=config.batch_size,
                max_objects=1 if llava_step < config.curriculum * config.steps else 3,
                augment_noise=config.augment_noise,
                popular_weight=config.popular_weight,
            )
            lr = learning_rate(config.lr, config.warmup, config.steps, llava_step)
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                pixel_values=pixel_path(batch["pixels"]),
            ).logits
            loss = turn_weighted_loss(logits, batch["labels"], batch["turn_ids"])
        for group in optimizer.param_groups:
            group["lr"] = lr * group["scale"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        done = step + 1
        stage_end = done in (config.vision_steps, total)
        if done % config.probe_every == 0 or stage_end:
            if vision:
                scores = vision_probe(model, heads, pixel_path, shape.patch_size, config.probe_scenes)
            else:
                scores = probe(model, processor, pixel_path, config.probe_scenes)
            stage = "vision" if vision else "llava"
            history.append(
                {"step": done, "stage": stage, "loss": loss.item(), "seconds": time.perf_counter() - started, **scores}
            )
            log(f"step {done} ({stage}): loss {loss.item():.4f} " + " ".join(f"{k} {v:.2f}" for k, v in scores.items()))
            model.train()
        if done % config.checkpoint_every == 0 or stage_end:
            _save_state(state_path, model, heads, optimizer, done, history, settings)
    bar.close()
    return export(model, processor, out_dir / "model", history)


def _optimizer(model, heads: VisionHeads, config: TrainConfig, *, vision: bool) -> torch.optim.Optimizer:
    """AdamW over the stage's parameters; each group's ``scale`` multiplies the scheduled rate.
    Vision stage: the tower up to the projector's layer and the heads. LLaVA stage: everything, the
    tower at ``tower_lr``."""
    tower = model.model.vision_tower
    if vision:
        groups = [{"params": [*tower.parameters(), *heads.parameters()], "scale": 1.0}]
    else:
        tower_ids = {id(p) for p in tower.parameters()}
        rest = [p for p in model.parameters() if id(p) not in tower_ids]
        groups = [{"params": rest, "scale": 1.0}, {"params": list(tower.parameters()), "scale": config.tower_lr}]
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def _save_state(
    path: Path, model, heads: VisionHeads, optimizer, step: int, history: list[dict], settings: dict
) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(
        {
            "model": model.state_dict(),
            "heads": heads.state_dict(),
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


@torch.no_grad()
def vision_probe(model, heads: VisionHeads, pixel_path: ClipStylePreprocessor, patch_size: int, count: int) -> dict:
    """Held-out accuracy of the vision heads: per object its shape (the per-object head) and the
    majority of its patches' colour predictions; per image the count and the badge."""
    model.eval()
    scenes = held_out_scenes(count)
    targets = [patch_targets(scene, patch_size) for scene in scenes]
    owners = torch.stack([t[2] for t in targets])
    pixels = torch.stack([scene_pixels(scene) for scene in scenes])
    outputs = heads(patch_features(model, pixel_path(pixels)), owners)
    colors, object_shapes = outputs["colors"].argmax(-1), outputs["object_shapes"].argmax(-1)
    hits: dict[str, list[bool]] = defaultdict(list)
    for row, scene in enumerate(scenes):
        for index, obj in enumerate(scene.objects):
            patches = owners[row] == index
            if patches.any():
                hits["object-shape"].append(object_shapes[row, index].item() == PATCH_SHAPES.index(obj.shape))
                hits["object-color"].append(colors[row][patches].mode().values.item() == PATCH_COLORS.index(obj.color))
        hits["count"].append(outputs["count"][row].argmax().item() == len(scene.objects))
        hits["badge"].append(outputs["badge"][row].argmax().item() == int(scene.badge))
    return {key: sum(v) / len(v) for key, v in sorted(hits.items())}
