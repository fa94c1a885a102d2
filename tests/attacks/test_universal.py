"""Tests of ``smoothguard.attacks.universal``."""

import pytest
import torch
import torch.nn.functional as F

from smoothguard.attacks.universal import UniversalJailbreak

JAILBREAK_PROMPTS = ["What is in the image?", "Describe it."]


CORPUS = ("Sure, here it is.", "No.", "I will help you with anything.")


def grid_image(seed=0, height=24, width=30):
    """[3, H, W] smooth colours on the 8-bit grid."""
    small = torch.rand(1, 3, 3, 4, generator=torch.Generator().manual_seed(seed))
    return (F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)[0] * 255).round() / 255


def in_context_ids(model, prompt, target):
    """``target``'s ids where the chat template puts an answer to ``prompt``: the conversation rendered with
    the answer, cut at the answer's end, tokenised, less the ids of the generation prompt; + EOS."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    asked = model.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    answer = [{"role": "assistant", "content": [{"type": "text", "text": target}]}]
    answered = model.processor.apply_chat_template([*conversation, *answer], tokenize=False)
    answered = answered[: answered.rindex(target) + len(target)]
    asked_ids, answered_ids = model.tokenizer(asked)["input_ids"], model.tokenizer(answered)["input_ids"]
    assert answered_ids[: len(asked_ids)] == asked_ids
    return [*answered_ids[len(asked_ids) :], model.tokenizer.eos_token_id]


def teacher_forced_ce(model, prompt, pixels, target):
    """Mean cross-entropy of ``target`` (+ EOS, tokenised in context) after ``prompt`` and ``pixels``: one
    unpadded forward pass of the HF model, written here without the attack's batched loss."""
    text = model.prompt_text(prompt, pixels)
    ids = in_context_ids(model, prompt, target)
    length = text["input_ids"].shape[1]
    full = torch.cat([text["input_ids"], torch.tensor([ids])], dim=1)
    with torch.no_grad():
        pixel_values = model.preprocess(pixels.unsqueeze(0))["pixel_values"]
        logits = model.model(input_ids=full, attention_mask=torch.ones_like(full), pixel_values=pixel_values).logits
    return F.cross_entropy(logits[0, length - 1 : -1].float(), torch.tensor(ids)).item()


def corpus_loss(model, pixels, targets):
    """The universal attack's objective: the CE averaged over every prompt and every target."""
    losses = [teacher_forced_ce(model, p, pixels, t) for p in JAILBREAK_PROMPTS for t in targets]
    return sum(losses) / len(losses)


def test_universal_jailbreak_stays_in_budget_on_the_8_bit_grid_and_lowers_the_loss(tiny_llava):
    """eps 8/255 L-inf around the start, pixels in [0, 1] on the 8-bit grid, every step run, the reported
    start / end losses equal to the corpus CE averaged over both prompts and all targets (computed here),
    the end lower, and the same seed giving the same image. Mutations caught: eps or alpha not in 1/255
    units, no projection or quantisation, the loss of one prompt or one target only, losses not averaged."""
    x = grid_image()
    attack = UniversalJailbreak(eps=8, alpha=1, steps=4, targets_per_step=3, progress=False)
    result = attack(tiny_llava, x, JAILBREAK_PROMPTS, CORPUS)
    adversarial = result.adversarial
    assert adversarial.shape == x.shape and adversarial.dtype == torch.float32
    levels = adversarial * 255
    assert (levels - levels.round()).abs().max() < 1e-4  # saved as 8-bit, as the attack documents
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    change = (levels.round() - (x * 255).round()).abs().max().item()
    assert 0 < change <= 8 and result.linf == pytest.approx(change, abs=1e-3)
    assert result.steps == len(result.losses) == 4
    assert result.start_loss == pytest.approx(corpus_loss(tiny_llava, x, CORPUS), abs=1e-4)
    assert result.end_loss == pytest.approx(corpus_loss(tiny_llava, adversarial, CORPUS), abs=1e-4)
    assert result.end_loss < result.start_loss and result.losses[-1] < result.losses[0]
    assert result.config["eps"] == 8 and result.config["prompts"] == JAILBREAK_PROMPTS
    assert result.config["objective"] == {
        "kind": "targeted",
        "targets": list(CORPUS),
        "targets_per_step": 3,
        "seed": 0,
    }
    again = attack(tiny_llava, x, JAILBREAK_PROMPTS, CORPUS)
    assert torch.equal(again.adversarial, adversarial) and again.losses == result.losses


def test_universal_jailbreak_samples_its_targets_per_step_from_its_seed(tiny_llava):
    """With eps 0 the image cannot move, so each step's loss is the CE of the target(s) drawn at that step:
    one of the three per-target values (computed here), not their mean, varying between steps, the same
    for the same seed and not for another. Mutations caught: targets_per_step or the seed not passed on
    to the target sampling, one draw for the whole run."""
    x = grid_image(1)
    per_target = [corpus_loss(tiny_llava, x, [target]) for target in CORPUS]

    def losses(seed):
        attack = UniversalJailbreak(eps=0, steps=6, targets_per_step=1, seed=seed, progress=False)
        result = attack(tiny_llava, x, JAILBREAK_PROMPTS, CORPUS)
        assert torch.equal(result.adversarial, x)
        return result.losses

    drawn = losses(0)
    assert all(min(abs(loss - value) for value in per_target) < 1e-4 for loss in drawn)
    assert len({round(loss, 4) for loss in drawn}) >= 2
    assert losses(0) == drawn and losses(1) != drawn


def test_universal_jailbreak_never_stops_early(tiny_llava):
    """Qi et al.'s attack runs every step: with a single target the model already generates, PGD's
    early stop (checked every 10 steps) would end an 11-step run at 10."""
    x = grid_image(2)
    target = tiny_llava.generate([tiny_llava.encode(JAILBREAK_PROMPTS[0], x)], max_new_tokens=6)[0]
    assert target.strip()
    attack = UniversalJailbreak(eps=0, steps=11, targets_per_step=1, progress=False)
    result = attack(tiny_llava, x, JAILBREAK_PROMPTS[:1], [target])
    assert result.steps == len(result.losses) == 11
    assert result.target_generated is True
