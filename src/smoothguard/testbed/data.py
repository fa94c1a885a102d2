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

from smoothguard.testbed.scenes import Scene, render, sample_scene
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
) -> dict[str, torch.Tensor]:
    """``batch_size`` conversations, right-padded: ``pixels`` [B, 3, 64, 64] in [0, 1],
    ``input_ids`` / ``attention_mask`` / ``labels`` / ``turn_ids`` [B, L]. Half the images get
    Gaussian sensor noise with a std uniform in [0, augment_noise] (pixel units)."""
    examples, pixels = [], []
    for index in range(batch_size):
        scene_seed = training_seed(seed, step, index, batch_size)
        rng = random.Random(scene_seed)
        scene = sample_scene(scene_seed, max_objects=max_objects)
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
