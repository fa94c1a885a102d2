"""Tests of ``smoothguard.attacks.loss``."""

import torch

from smoothguard import ConfigError
from smoothguard.attacks.loss import target_losses
from support.attacks import ce, greedy_answer, make_image, medium_of, plain_token_ids

# Three targets of different token lengths (right padding is exercised), two drawn per step.
TARGETS = ("Sure, here is the answer.", "No.", "The sky is clear today. One, two, three, four, five.")


PROMPT = "What is in the image?"


def test_target_loss_does_not_depend_on_the_other_targets(model):
    x = medium_of(model)
    lengths = {len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TARGETS}
    assert len(lengths) == len(TARGETS)  # different lengths: the shorter rows are right-padded
    batched = ce(model, x, TARGETS)
    alone = torch.stack([ce(model, x, [t])[0] for t in TARGETS])
    reversed_order = ce(model, x, TARGETS[::-1]).flip(0)
    assert batched.shape == (len(TARGETS),)
    assert torch.isfinite(batched).all()
    assert torch.allclose(batched, alone, atol=1e-5, rtol=1e-5)
    assert torch.allclose(batched, reversed_order, atol=1e-5, rtol=1e-5)
    assert len(set(batched.tolist())) == len(TARGETS)  # really per target, not one shared value


def test_target_loss_is_lower_for_the_greedy_answer(model):
    x = medium_of(model)
    answer = greedy_answer(model, x)
    length = len(model.tokenizer(answer, add_special_tokens=False)["input_ids"])
    plain = plain_token_ids(model.tokenizer)
    generator = torch.Generator().manual_seed(1)
    others = []
    while len(others) < 8:
        text = model.tokenizer.decode([plain[i] for i in torch.randint(len(plain), (length,), generator=generator)])
        if text != answer and len(model.tokenizer(text, add_special_tokens=False)["input_ids"]) == length:
            others.append(text)
    losses = ce(model, x, [answer, *others])
    assert torch.isfinite(losses).all()
    assert losses[0] < losses[1:].min(), (answer, losses.tolist())


def test_gradients_reach_the_medium(model):
    x = medium_of(model).requires_grad_(True)
    text = model.prompt_text(PROMPT, x.detach())
    loss = target_losses(model, PROMPT, text, model.preprocess(x.unsqueeze(0)), list(TARGETS)).mean()
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.shape == x.shape
    assert torch.isfinite(grad).all()
    assert (grad != 0).float().mean() > 0.5


def test_several_media_in_one_batch_give_each_medium_its_own_losses(model):
    """EOT's samples go through one forward pass: rows medium-major, each row's loss as if alone
    (mutation: media repeated target-major would pair medium 1 with target 0's row)."""
    x = medium_of(model)
    text = model.prompt_text(PROMPT, x)
    media = [model.preprocess(x.unsqueeze(0)), model.preprocess((x * 0.5).unsqueeze(0))]
    together = target_losses(model, PROMPT, text, media, list(TARGETS))
    alone = torch.cat([target_losses(model, PROMPT, text, m, list(TARGETS)) for m in media])
    assert together.shape == (2 * len(TARGETS),) and torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(alone[: len(TARGETS)], alone[len(TARGETS) :])  # the two media differ


def test_placeholder_text_in_a_target_is_text_or_a_clear_error(llava):
    """A target that spells the image placeholder must not crash inside the model with a
    feature/token count mismatch: either it is read as text or refused with ConfigError."""
    x = make_image()
    try:
        losses = ce(llava, x, ["<image> is a cat"])
    except ConfigError:
        return
    assert torch.isfinite(losses).all()
