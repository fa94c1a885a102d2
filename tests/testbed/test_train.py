"""Tests of ``smoothguard.testbed.train``."""

import json

import pytest
import torch

from smoothguard import ConfigError, load_model
from smoothguard.testbed.data import (
    IGNORE,
    ConversationEncoder,
    training_batch,
)
from smoothguard.testbed.model import ModelSize, build_model, build_processor
from smoothguard.testbed.train import TrainConfig, train, turn_weighted_loss


def test_turn_weighted_loss_weighs_every_turn_equally():
    logits = torch.zeros(1, 6, 5)
    logits[0, 0, 1] = 5.0  # predicts the one-token turn well
    labels = torch.tensor([[IGNORE, 1, IGNORE, 2, 2, 2]])
    turns = torch.tensor([[-1, 0, -1, 1, 1, 1]])
    loss = turn_weighted_loss(logits, labels, turns)
    per_token = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE, reduction="none")
    # each turn weighs 1: half on its first (deciding) token, half shared by all its tokens
    one_token_turn = per_token[0]
    three_token_turn = 0.5 * per_token[2] + 0.5 * per_token[2:5].mean()
    assert loss.item() == pytest.approx(((one_token_turn + three_token_turn) / 2).item())


def test_short_training_lowers_the_loss_resumes_and_exports(tmp_path):
    shape = ModelSize(vision_hidden=32, vision_layers=2, text_hidden=32, text_layers=1, heads=2)
    config = TrainConfig(
        steps=8, vision_steps=3, batch_size=4, lr=3e-3, warmup=1, checkpoint_every=2, probe_every=4, probe_scenes=2
    )
    processor = build_processor()
    encoder = ConversationEncoder(processor)
    batch = training_batch(
        encoder, 64, seed=5, step=0, batch_size=4, max_objects=3, augment_noise=0.0, popular_weight=1.5
    )

    def fixed_batch_loss(model) -> float:
        from smoothguard.models.image_ops import ClipStylePreprocessor

        pixel_path = ClipStylePreprocessor.from_image_processor(processor.image_processor)
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                pixel_values=pixel_path(batch["pixels"]),
            ).logits
        return turn_weighted_loss(logits.float(), batch["labels"], batch["turn_ids"]).item()

    before = fixed_batch_loss(build_model(processor, shape, seed=config.seed))
    lines: list[str] = []

    def crash_at_first_probe(
        line: str,
    ) -> None:  # a run killed at the end of its vision stage, after step 2's checkpoint
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, config, shape=shape, progress=False, log=crash_at_first_probe)
    folder = train(tmp_path, config, shape=shape, progress=False, log=lines.append)
    assert lines[0] == "resuming at step 2"
    trained = load_model(folder)
    assert fixed_batch_loss(trained.model) < before
    history = json.loads((folder / "training_history.json").read_text())
    assert [(h["step"], h["stage"]) for h in history] == [(3, "vision"), (4, "llava"), (8, "llava"), (11, "llava")]
    assert {"object-shape", "object-color", "count", "badge"} <= set(history[0])  # the vision heads' probe
    with pytest.raises(ConfigError, match="other settings"):
        train(tmp_path, TrainConfig(**{**config.__dict__, "lr": 1e-4}), shape=shape, progress=False)
