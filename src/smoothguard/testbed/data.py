"""Training and held-out data of the testbed, generated on the fly and disjoint by seed.

A training example is one scene and a multi-turn conversation about it (every task once, random
order), tokenised in LLaVA-1.5's format with the image placeholder expanded. Labels mark answer
tokens only; ``turn_ids`` number the answer tokens per turn so that the loss can weigh every
question equally, however long its answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from smoothguard.testbed.scenes import COLORS, IMAGE_SIZE, SHAPES, Scene, badge_box, object_masks, render, sample_scene
from smoothguard.testbed.tasks import Turn, scene_turns

#: Scene seeds: training uses [0, HELD_OUT_START), evaluation [HELD_OUT_START, ...).
HELD_OUT_START = 1_000_000_000
IGNORE = -100


def training_seed(seed: int, step: int, index: int, batch_size: int) -> int:
    """Seed of example ``index`` of batch ``step`` (stateless: a resumed run sees the same data)."""
    return (seed * 7_368_787 + step * batch_size + index) % HELD_OUT_START


def held_out_scenes(count: int, *, max_objects: int = 3, badge: bool | None = None) -> list[Scene]:
    return [sample_scene(HELD_OUT_START + i, max_objects=max_objects, badge=badge) for i in range(count)]


def scene_pixels(scene: Scene, noise: float = 0.0, rng: random.Random | None = None) -> torch.Tensor:
    """Rendered scene as [3, 64, 64] in [0, 1], with optional Gaussian sensor noise (pixel units)."""
    pixels = torch.from_numpy(np.asarray(render(scene), dtype=np.float32) / 255).permute(2, 0, 1)
    if noise > 0:
        generator = torch.Generator().manual_seed((rng or random.Random(scene.seed)).randrange(2**31))
        pixels = (pixels + noise * torch.randn(pixels.shape, generator=generator)).clamp(0, 1)
    return pixels


#: Per-patch classes of the vision pretraining targets: 0 = no object, then the colours (and the
#: badge) / the shapes, in the order of ``COLORS`` / ``SHAPES``.
PATCH_COLORS = ("none", *COLORS, "badge")
PATCH_SHAPES = ("none", *SHAPES)


#: Most objects a scene holds (the object heads' slots).
MAX_OBJECTS = 3


def patch_targets(scene: Scene, patch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-patch colour class, shape class and owner of ``scene`` ([P] each, P = (64 / patch_size) ** 2,
    row-major): a patch belongs to the object covering most of it if that covers at least a quarter
    of it (owner = the object's index, else -1; colour and shape 0). The badge's patches: colour
    "badge", shape 0, owner -1."""
    masks = torch.from_numpy(object_masks(scene))
    grid = IMAGE_SIZE // patch_size
    cells = masks.reshape(grid, patch_size, grid, patch_size).permute(0, 2, 1, 3).reshape(grid * grid, -1)
    colors = torch.zeros(grid * grid, dtype=torch.long)
    shapes = torch.zeros(grid * grid, dtype=torch.long)
    owners = torch.full((grid * grid,), -1, dtype=torch.long)
    if scene.objects:
        cover = torch.stack([(cells == index).sum(dim=1) for index in range(len(scene.objects))])  # [objects, P]
        most, owner = cover.max(dim=0)
        for index, obj in enumerate(scene.objects):
            mine = (owner == index) & (most >= patch_size * patch_size // 4)
            colors[mine] = PATCH_COLORS.index(obj.color)
            shapes[mine] = PATCH_SHAPES.index(obj.shape)
            owners[mine] = index
    if scene.badge:
        left, top, right, bottom = badge_box()
        rows = torch.arange(grid * grid) // grid
        cols = torch.arange(grid * grid) % grid
        centre_x, centre_y = cols * patch_size + patch_size / 2, rows * patch_size + patch_size / 2
        inside = (centre_x >= left) & (centre_x <= right + 1) & (centre_y >= top) & (centre_y <= bottom + 1)
        colors[inside] = PATCH_COLORS.index("badge")
    return colors, shapes, owners


def vision_batch(*, seed: int, step: int, batch_size: int, patch_size: int, augment_noise: float) -> dict:
    """A batch for the vision pretraining stage, pairs drawn uniformly (no colour-shape shortcut):
    ``pixels`` [B, 3, 64, 64] in [0, 1]; per patch ``colors`` / ``shapes`` / ``owners`` [B, P]; per
    object slot ``object_shapes`` [B, MAX_OBJECTS] (``IGNORE`` where the scene has fewer); ``count``
    [B] (objects), ``badge`` [B] (0/1)."""
    keys = ("pixels", "colors", "shapes", "owners", "object_shapes", "count", "badge")
    columns: dict[str, list] = {key: [] for key in keys}
    for index in range(batch_size):
        scene_seed = training_seed(seed + 1, step, index, batch_size)
        rng = random.Random(scene_seed)
        scene = sample_scene(scene_seed, popular_weight=1.0)
        noise = rng.uniform(0, augment_noise) if rng.random() < 0.5 else 0.0
        colors, shapes, owners = patch_targets(scene, patch_size)
        present = [PATCH_SHAPES.index(o.shape) if (owners == i).any() else IGNORE for i, o in enumerate(scene.objects)]
        row = {
            "pixels": scene_pixels(scene, noise, rng),
            "colors": colors,
            "shapes": shapes,
            "owners": owners,
            "object_shapes": torch.tensor(present + [IGNORE] * (MAX_OBJECTS - len(present))),
            "count": len(scene.objects),
            "badge": int(scene.badge),
        }
        for key in keys:
            columns[key].append(row[key])
    return {key: torch.stack(v) if torch.is_tensor(v[0]) else torch.tensor(v) for key, v in columns.items()}


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    turn_ids: list[int]  # per token: index of the turn it answers, -1 elsewhere


class ConversationEncoder:
    """Tokenises conversations exactly as the model sees them at inference."""

    def __init__(self, processor) -> None:
        self.tokenizer = processor.tokenizer
        self.image_id = self.tokenizer.convert_tokens_to_ids("<image>")

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, turns: list[Turn], image_tokens: int) -> Encoded:
        input_ids: list[int] = []
        labels: list[int] = []
        turn_ids: list[int] = []
        for index, turn in enumerate(turns):
            prefix = f"USER: <image>\n{turn.question} ASSISTANT:" if index == 0 else f"USER: {turn.question} ASSISTANT:"
            prompt = []
            for token in self.ids(prefix):
                prompt += [token] * image_tokens if token == self.image_id else [token]
            answer = [*self.ids(" " + turn.answer), self.tokenizer.eos_token_id]
            input_ids += prompt + answer
            labels += [IGNORE] * len(prompt) + answer
            turn_ids += [-1] * len(prompt) + [index] * len(answer)
        return Encoded(input_ids, labels, turn_ids)


def training_batch(
    encoder: ConversationEncoder,
    image_tokens: int,
    *,
    seed: int,
    step: int,
    batch_size: int,
    max_objects: int,
    augment_noise: float,
    popular_weight: float,
) -> dict[str, torch.Tensor]:
    """``batch_size`` conversations, right-padded: ``pixels`` [B, 3, 64, 64] in [0, 1],
    ``input_ids`` / ``attention_mask`` / ``labels`` / ``turn_ids`` [B, L]. Half the images get
    Gaussian sensor noise with a std uniform in [0, augment_noise] (pixel units)."""
    examples, pixels = [], []
    for index in range(batch_size):
        scene_seed = training_seed(seed, step, index, batch_size)
        rng = random.Random(scene_seed)
        scene = sample_scene(scene_seed, max_objects=max_objects, popular_weight=popular_weight)
        noise = rng.uniform(0, augment_noise) if rng.random() < 0.5 else 0.0
        pixels.append(scene_pixels(scene, noise, rng))
        examples.append(encoder.encode(scene_turns(scene, rng), image_tokens))
    width = max(len(e.input_ids) for e in examples)
    pad = encoder.tokenizer.pad_token_id
    batch = {
        "input_ids": torch.full((batch_size, width), pad),
        "attention_mask": torch.zeros((batch_size, width), dtype=torch.long),
        "labels": torch.full((batch_size, width), IGNORE),
        "turn_ids": torch.full((batch_size, width), -1),
    }
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        batch["input_ids"][row, :n] = torch.tensor(example.input_ids)
        batch["attention_mask"][row, :n] = 1
        batch["labels"][row, :n] = torch.tensor(example.labels)
        batch["turn_ids"][row, :n] = torch.tensor(example.turn_ids)
    batch["pixels"] = torch.stack(pixels)
    return batch
