"""Attacks (``smoothguard.attacks``) on tiny random models of every family: LLaVA, Qwen2-VL,
Qwen2.5-VL (images, ``PGD``) and Qwen2-Audio (waveforms, ``WaveformPGD``).

Covered: the teacher-forced loss, budgets and bounds, 8-bit results, L2 and unconstrained attacks,
untargeted attacks, resuming from checkpoints, EOT through SmoothGuard's noise, early stopping and
argument errors. Every model is built once per module and loaded through ``load_model(folder)``.
"""

import contextlib
import json
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from smoothguard import ConfigError, InputError, SmoothGuard, load_model
from smoothguard.attacks import EOT, PGD, AwayObjective, TargetObjective, WaveformPGD
from smoothguard.attacks.eot import step_seed
from smoothguard.attacks.loss import target_losses
from smoothguard.errors import UnsupportedError
from smoothguard.inputs import load_image
from smoothguard.models.tiny import BUILDERS
from smoothguard.noise import GaussianNoise, copy_seeds

IMAGE_FAMILIES = ["llava", "qwen2-vl", "qwen2.5-vl"]
ALL_FAMILIES = [*IMAGE_FAMILIES, "qwen2-audio"]
PROMPT = "What is in the image?"
TARGET = "Sure, here is the answer."
# Three targets of different token lengths (right padding is exercised), two drawn per step.
TARGETS = ("Sure, here is the answer.", "No.", "The sky is clear today. One, two, three, four, five.")


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """``zoo(family)``: the tiny model of ``family``, built and loaded once per module."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_model(BUILDERS[family](tmp_path_factory.mktemp(family)))
        return cache[family]

    return get


@pytest.fixture(params=ALL_FAMILIES)
def model(request, zoo):
    return zoo(request.param)


@pytest.fixture
def llava(zoo):
    return zoo("llava")


@pytest.fixture
def audio_model(zoo):
    return zoo("qwen2-audio")


def make_image(seed=0, height=32, width=40):
    """Smooth colours on the 8-bit grid, [3, H, W], with a black and a white patch (so clamping to
    [0, 1] matters)."""
    small = torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(seed))
    image = torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)[0]
    image[:, :6, :6] = 0.0
    image[:, -6:, -6:] = 1.0
    return (image * 255).round() / 255


def make_wave(seed=0, samples=8000):
    """Half a second at 16 kHz: a tone plus noise, with stretches at +-0.99 (near the bounds)."""
    t = torch.arange(samples) / 16000
    noise = torch.rand(samples, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    wave = 0.5 * torch.sin(2 * torch.pi * 330 * t) + 0.3 * noise
    wave[:200], wave[200:400] = 0.99, -0.99
    return wave


def medium_of(model, seed=0):
    return make_image(seed) if model.modality == "image" else make_wave(seed)


def attack_of(model, **kwargs):
    """PGD for image models, WaveformPGD for audio ones, quiet and without early stopping unless asked."""
    kwargs = {"progress": False, "early_stop": False, **kwargs}
    if model.modality == "image":
        return PGD(**{"eps": 16, "alpha": 2, **kwargs})
    return WaveformPGD(**{"eps": 0.05, "alpha": 0.005, **kwargs})


def plain_token_ids(tokenizer):
    """Vocabulary entries that are printable ASCII text, not special, and tokenize back to themselves."""
    added = set(tokenizer.get_added_vocab().values()) | set(tokenizer.all_special_ids)
    plain = []
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if token_id in added or not text.isascii() or not text.isprintable() or text != text.strip() or not text:
            continue
        if tokenizer(text, add_special_tokens=False)["input_ids"] == [token_id]:
            plain.append(token_id)
    return plain


def greedy_answer(model, medium, max_new_tokens=5):
    """The model's greedy answer over plain-text tokens (a random model's unrestricted answer holds
    partial UTF-8 bytes and placeholder tokens, which do not survive a decode/encode round trip)."""
    plain = set(plain_token_ids(model.tokenizer))
    banned = [[i] for i in range(len(model.tokenizer)) if i not in plain]
    answer = model.generate([model.encode(PROMPT, medium)], max_new_tokens=max_new_tokens, bad_words_ids=banned)[0]
    assert answer.strip(), "the greedy answer is empty"
    return answer


def ce(model, medium, targets):
    """Teacher-forced CE of each target for ``medium`` (no grad), [K]."""
    with torch.no_grad():
        text = model.prompt_text(PROMPT, medium)
        return target_losses(model, PROMPT, text, model.preprocess(medium.unsqueeze(0)), list(targets))


def on_grid(image):
    return torch.equal(image * 255, (image * 255).round())


def grid_linf(adversarial, clean):
    """Largest pixel change in whole 1/255 steps (exact for 8-bit inputs)."""
    return ((adversarial * 255).round() - (clean * 255).round()).abs().max().item()


# ---------------------------------------------------------------------------- teacher-forced loss


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


# ------------------------------------------------------------------------------------------ PGD


def test_pgd_lowers_the_loss_within_budget_and_bounds(model, tmp_path):
    x = medium_of(model)
    attack = attack_of(model, steps=6)
    result = attack(model, x, PROMPT, TargetObjective.of(TARGET), max_new_tokens=4)
    adv = result.adversarial

    assert result.steps == len(result.losses) == 6
    assert result.end_loss < result.start_loss
    assert result.losses[-1] < result.losses[0]
    falling = sum(b < a for a, b in pairwise(result.losses))
    assert falling >= 4, result.losses
    assert result.target_generated is False
    assert adv.shape == x.shape and adv.dtype == torch.float32
    assert not torch.equal(adv, x)
    assert result.linf <= attack.eps + 1e-6
    assert result.config["model"]["family"] == model.family
    json.dumps(result.to_dict())

    if model.modality == "audio":
        assert (adv - x).abs().max().item() <= attack.eps + 1e-6
        assert adv.min() >= -1.0 and adv.max() <= 1.0
        assert (adv - x).abs().max().item() > attack.eps / 2  # the budget is used, not ignored
        return
    assert (adv - x).abs().max().item() * 255 <= attack.eps + 1e-4
    assert grid_linf(adv, x) <= attack.eps
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert on_grid(adv)
    path = tmp_path / "adversarial.png"
    Image.fromarray((adv * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(path)
    assert torch.equal(load_image(path), adv)


@pytest.mark.parametrize("family", ["llava", "qwen2-audio"])
def test_l2_attack_respects_its_budget(zoo, family):
    model = zoo(family)
    x = medium_of(model)
    eps = 20 if model.modality == "image" else 0.5
    attack = attack_of(model, norm="l2", eps=eps, alpha=eps / 2, steps=4)
    result = attack(model, x, PROMPT, TargetObjective.of(TARGET), max_new_tokens=2)
    norm = (result.adversarial - x).norm().item() / attack.unit
    assert result.l2 <= eps + 1e-4
    assert norm <= eps * (1 + 1e-5)
    assert result.l2 > 0 and not torch.equal(result.adversarial, x)
    if model.modality == "audio":  # no 8-bit rounding: steps of eps / 2 reach the sphere
        assert norm > eps / 2
    assert result.end_loss < result.start_loss


@pytest.mark.parametrize(
    ("eps", "offset"),
    [(2.5, 0.0), (4, 0.4 / 255)],
    ids=["fractional-eps", "off-grid-image"],
)
def test_linf_budget_holds_after_8_bit_rounding(llava, eps, offset):
    """The saved (8-bit) image is the attack's output, so the budget must hold after rounding too,
    also for a fractional eps or an input not on the 8-bit grid (e.g. from a 16-bit PNG)."""
    x = (make_image() + offset).clamp(0, 1)
    result = PGD(eps=eps, alpha=1, steps=3, early_stop=False, progress=False)(
        llava, x, PROMPT, TargetObjective.of(TARGET), max_new_tokens=2
    )
    assert on_grid(result.adversarial)
    assert (result.adversarial - x).abs().max().item() * 255 <= eps + 1e-4
    assert result.linf <= eps + 1e-6


def test_unconstrained_attack(llava):
    x = make_image()
    objective = TargetObjective.of(TARGET)
    from_clean = PGD(eps=None, alpha=4, steps=3, random_start=False, early_stop=False, progress=False)
    result = from_clean(llava, x, PROMPT, objective, max_new_tokens=2)
    assert result.config["eps"] is None
    assert result.losses[0] == pytest.approx(result.start_loss, abs=1e-5)  # starts at the clean image
    assert result.end_loss < result.start_loss
    assert 0 < result.linf <= 3 * 4  # only the steps move it
    assert on_grid(result.adversarial)
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1

    random_start = PGD(eps=None, alpha=4, steps=3, early_stop=False, progress=False)
    result = random_start(llava, x, PROMPT, objective, max_new_tokens=2)
    assert result.linf > 64  # not held to any ball
    assert result.losses[-1] < result.losses[0]
    assert on_grid(result.adversarial)
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1


def test_untargeted_attack_raises_the_reference_loss(model):
    x = medium_of(model)
    reference = greedy_answer(model, x)
    result = attack_of(model, steps=4)(model, x, PROMPT, AwayObjective(reference), max_new_tokens=4)
    before, after = ce(model, x, [reference]).item(), ce(model, result.adversarial, [reference]).item()
    assert after > before
    assert result.start_loss == pytest.approx(-before, abs=1e-5)
    assert result.end_loss == pytest.approx(-after, abs=1e-5)
    assert result.target_generated is None
    assert result.config["objective"] == {"kind": "untargeted", "reference": reference}


# -------------------------------------------------------------------------------------- resume


class Interrupted(Exception):
    pass


@dataclass(frozen=True)
class InterruptAt:
    """``inner``, but the run dies when it reaches ``step`` (as a killed process would)."""

    inner: TargetObjective
    step: int

    def __call__(self, adapter, prompt, text, media, step):
        if step == self.step:
            raise Interrupted
        return self.inner(adapter, prompt, text, media, step)

    def describe(self):
        return self.inner.describe()


def checkpoint_losses(path):
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["losses"])


@pytest.mark.parametrize(
    ("family", "with_eot"),
    [("llava", False), ("llava", True), ("qwen2-audio", False)],
    ids=["llava", "llava-eot", "audio"],
)
def test_resumed_run_equals_an_uninterrupted_one(zoo, tmp_path, family, with_eot):
    model = zoo(family)
    x = medium_of(model)
    objective = TargetObjective.of(TARGETS, targets_per_step=2)  # per-step target draws must resume too
    eot = EOT(GaussianNoise(0.1, "pixel"), samples=2) if with_eot else None

    def attack(steps):
        return attack_of(model, steps=steps, seed=3, checkpoint_every=2, eot=eot)

    straight = attack(6)(model, x, PROMPT, objective, max_new_tokens=2)

    path = tmp_path / "ck.safetensors"
    with pytest.raises(Interrupted):
        attack(6)(model, x, PROMPT, InterruptAt(objective, step=3), checkpoint=path, max_new_tokens=2)
    assert len(checkpoint_losses(path)) == 2  # the last checkpoint before the interruption
    resumed = attack(6)(model, x, PROMPT, objective, checkpoint=path, max_new_tokens=2)
    assert torch.equal(resumed.adversarial, straight.adversarial)
    assert resumed.losses == straight.losses
    assert (resumed.start_loss, resumed.end_loss, resumed.steps) == (straight.start_loss, straight.end_loss, 6)
    assert len(checkpoint_losses(path)) == 6

    # A finished run resumes to the same result without computing anything again.
    again = attack(6)(model, x, PROMPT, objective, checkpoint=path, max_new_tokens=2)
    assert torch.equal(again.adversarial, straight.adversarial) and again.losses == straight.losses

    # Under the cosine schedule the step sizes depend on the steps: a 2-step run cannot be extended to 6.
    path2 = tmp_path / "ck2.safetensors"
    attack(2)(model, x, PROMPT, objective, checkpoint=path2, max_new_tokens=2)
    with pytest.raises(ConfigError, match="belongs to another run"):
        attack(6)(model, x, PROMPT, objective, checkpoint=path2, max_new_tokens=2)

    # With a constant step, stopping at k steps then extending to N is the same as N steps.
    def constant(steps):
        return attack_of(model, steps=steps, seed=3, checkpoint_every=2, eot=eot, schedule="constant")

    straight = constant(6)(model, x, PROMPT, objective, max_new_tokens=2)
    path3 = tmp_path / "ck3.safetensors"
    constant(2)(model, x, PROMPT, objective, checkpoint=path3, max_new_tokens=2)
    extended = constant(6)(model, x, PROMPT, objective, checkpoint=path3, max_new_tokens=2)
    assert torch.equal(extended.adversarial, straight.adversarial) and extended.losses == straight.losses


PIXEL_EOT = EOT(GaussianNoise(0.1, "pixel"), samples=2)
# name: (changed attack settings, changed run inputs); "eot-clamp" starts from a run with PIXEL_EOT.
RESUME_CHANGES = {
    "eps": ({"eps": 4}, {}),
    "alpha": ({"alpha": 1}, {}),
    "norm": ({"norm": "l2"}, {}),
    "seed": ({"seed": 1}, {}),
    "random-start": ({"random_start": False}, {}),
    "eot": ({"eot": PIXEL_EOT}, {}),
    "eot-clamp": ({"eot": EOT(GaussianNoise(0.1, "pixel", clamp=False), samples=2)}, {}),
    "targets": ({}, {"objective": TargetObjective.of(["No.", "Yes."], targets_per_step=1)}),
    "target-sampling-seed": ({}, {"objective": TargetObjective.of(TARGETS, targets_per_step=2, seed=1)}),
    "untargeted": ({}, {"objective": AwayObjective("No.")}),
    "prompt": ({}, {"prompt": "Describe the scene."}),
    "image": ({}, {"image": make_image(seed=1)}),
    "image-size": ({}, {"image": make_image(height=40, width=32)}),
    "model": ({}, {"family": "qwen2-vl"}),
}


@pytest.mark.parametrize("change", RESUME_CHANGES, ids=list(RESUME_CHANGES))
def test_checkpoint_of_another_run_is_refused(zoo, tmp_path, change):
    base_attack = {"eps": 8, "alpha": 2, "seed": 0, "eot": PIXEL_EOT if change == "eot-clamp" else None}
    base_run = {
        "family": "llava",
        "image": make_image(),
        "prompt": PROMPT,
        "objective": TargetObjective.of(TARGETS, targets_per_step=2),
    }
    attack_change, run_change = RESUME_CHANGES[change]
    path = tmp_path / "ck.safetensors"

    def go(attack_settings, run, steps):
        attack = PGD(steps=steps, checkpoint_every=1, early_stop=False, progress=False, **attack_settings)
        model = zoo(run["family"])
        return attack(model, run["image"], run["prompt"], run["objective"], checkpoint=path, max_new_tokens=2)

    go(base_attack, base_run, steps=2)
    saved = path.read_bytes()
    with pytest.raises(ConfigError, match="checkpoint"):
        go({**base_attack, **attack_change}, {**base_run, **run_change}, steps=4)
    assert path.read_bytes() == saved  # a refused resume leaves the checkpoint alone


def test_checkpoint_with_more_steps_than_asked_is_refused(llava, tmp_path):
    path = tmp_path / "ck.safetensors"
    x, objective = make_image(), TargetObjective.of(TARGET)
    for steps, refused in ((3, None), (2, "already ran 3 steps")):
        attack = PGD(steps=steps, schedule="constant", early_stop=False, progress=False)
        with pytest.raises(ConfigError, match=refused) if refused else contextlib.nullcontext():
            attack(llava, x, PROMPT, objective, checkpoint=path, max_new_tokens=2)


def _valid_checkpoint_bytes(llava, folder):
    path = folder / "valid.safetensors"
    PGD(steps=1, early_stop=False, progress=False)(
        llava, make_image(), PROMPT, TargetObjective.of(TARGET), checkpoint=path, max_new_tokens=2
    )
    return path.read_bytes()


def _with_metadata(folder, metadata):
    path = folder / "meta.safetensors"
    x = make_image()
    save_file({"x": x, "x0": x.clone()}, str(path), metadata=metadata)
    return path.read_bytes()


CORRUPTIONS = {
    "garbage": lambda llava, folder: b"this is not a safetensors file",
    "empty": lambda llava, folder: b"",
    "truncated": lambda llava, folder: _valid_checkpoint_bytes(llava, folder)[:-100],
    "no-metadata": lambda llava, folder: _with_metadata(folder, None),
    "bad-json": lambda llava, folder: _with_metadata(folder, {"losses": "[1.0,", "config": "{}"}),
    "losses-not-a-list": lambda llava, folder: _with_metadata(folder, {"losses": "5", "config": "{}"}),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_corrupt_checkpoint_is_an_input_error(llava, tmp_path, corruption):
    path = tmp_path / "ck.safetensors"
    path.write_bytes(CORRUPTIONS[corruption](llava, tmp_path))
    with pytest.raises(InputError, match="checkpoint"):
        PGD(steps=2, early_stop=False, progress=False)(
            llava, make_image(), PROMPT, TargetObjective.of(TARGET), checkpoint=path, max_new_tokens=2
        )


# ----------------------------------------------------------------------------------------- EOT


EOT_CASES = [(family, space) for family in IMAGE_FAMILIES for space in ("normalized", "pixel")]
EOT_CASES.append(("qwen2-audio", "waveform"))


@pytest.mark.parametrize(("family", "space"), EOT_CASES, ids=[f"{f}-{s}" for f, s in EOT_CASES])
def test_eot_draws_fresh_noise_per_sample_and_step(zoo, minilm, family, space):
    model = zoo(family)
    sigma = 0.1 if space != "waveform" else 0.01
    guard = SmoothGuard(model, sigma=sigma, noise_space=space, embedder=minilm)
    eot = EOT.from_guard(guard, samples=2)
    assert eot.noise == guard.noise
    assert eot.describe() == {"samples": 2, "clean": True, "sigma": sigma, "noise_space": space, "clamp": True}
    x = medium_of(model)
    key = model.normalized_key if model.modality == "image" else "input_features"
    clean = model.preprocess(x.unsqueeze(0))

    step0, step0_again = eot.media(model, x, 0, 0), eot.media(model, x, 0, 0)
    step1, other_seed = eot.media(model, x, 0, 1), eot.media(model, x, 1, 0)
    assert len(step0) == len(step1) == 3  # 2 noisy copies, then the clean candidate the vote also sees
    for media, clean_one in ((step0[2], clean), (step1[2], clean)):
        assert all(torch.equal(media[name], clean_one[name]) for name in clean_one)
    for media, again in zip(step0, step0_again, strict=True):
        assert media.keys() == clean.keys()
        for name in media:
            assert media[name].shape == clean[name].shape
            assert torch.equal(media[name], again[name])
    assert not torch.equal(step0[0][key], step0[1][key])  # per sample
    assert not torch.equal(step0[0][key], step1[0][key])  # per step
    assert not torch.equal(step0[1][key], step1[1][key])
    assert not torch.equal(step0[0][key], other_seed[0][key])  # per seed
    assert not torch.equal(step0[0][key], clean[key])
    if space == "normalized":
        assert (step0[0][key] - clean[key]).std().item() == pytest.approx(sigma, rel=0.15)
    # The noise is the guard's own draw for this step's seed.
    expected = guard.noise.copies(model, x, copy_seeds(step_seed(0, 1, stream=1), range(2)))
    assert torch.equal(step1[1][key], expected[1][key])
    # ... and, computed here from the formula rather than by guard.noise: x + sigma * N(0, 1) from the copy's
    # generator, clamped (pixel: [0, 1], waveform: [-1, 1]) and preprocessed; in normalized space the noise
    # lands on the preprocessed values.
    seed = copy_seeds(step_seed(0, 1, stream=1), range(2))[1]
    if space == "normalized":
        draw = torch.randn(clean[key].shape, generator=torch.Generator().manual_seed(seed))
        by_hand = clean[key] + sigma * draw
    else:
        low = 0.0 if space == "pixel" else -1.0
        draw = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        by_hand = model.preprocess((x + sigma * draw).clamp(low, 1.0).unsqueeze(0))[key]
    torch.testing.assert_close(step1[1][key], by_hand.reshape(step1[1][key].shape))

    # Differentiable w.r.t. the medium.
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(sum(m[key].sum() for m in eot.media(model, x, 0, 0)), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("space", ["normalized", "pixel"])
def test_eot_changes_the_attack(llava, minilm, space):
    x, objective = make_image(), TargetObjective.of(TARGET)
    eot = EOT.from_guard(SmoothGuard(llava, sigma=0.1, noise_space=space, embedder=minilm), samples=2)
    plain = PGD(eps=16, steps=3, seed=0, early_stop=False, progress=False)(
        llava, x, PROMPT, objective, max_new_tokens=2
    )
    attack = PGD(eps=16, steps=3, seed=0, eot=eot, early_stop=False, progress=False)
    adaptive = attack(llava, x, PROMPT, objective, max_new_tokens=2)
    again = attack(llava, x, PROMPT, objective, max_new_tokens=2)
    assert not torch.equal(adaptive.adversarial, plain.adversarial)
    assert adaptive.losses != plain.losses
    assert torch.equal(again.adversarial, adaptive.adversarial) and again.losses == adaptive.losses
    assert adaptive.config["eot"] == {"samples": 2, "clean": True, "sigma": 0.1, "noise_space": space, "clamp": True}
    assert plain.config["eot"] is None
    assert grid_linf(adaptive.adversarial, x) <= 16 and on_grid(adaptive.adversarial)
    assert adaptive.losses[-1] < adaptive.losses[0]


# ------------------------------------------------- step schedule, best iterate, restarts (issue 21)


def test_cosine_schedule_decays_the_step_from_alpha_to_zero():
    """step_size: ``alpha`` in 1/255 at step 0, half of it halfway, a quarter of the way down at 3/4 ...;
    constant: ``alpha`` at every step."""
    attack = PGD(alpha=4, steps=8, schedule="cosine", progress=False)
    sizes = [attack.step_size(step) * 255 for step in range(8)]
    assert sizes[0] == pytest.approx(4) and sizes[4] == pytest.approx(2) and sizes[6] == pytest.approx(4 * 0.1464, 1e-3)
    assert all(b < a for a, b in pairwise(sizes))
    assert PGD(alpha=4, steps=8, schedule="constant").step_size(7) * 255 == pytest.approx(4)


def test_the_lowest_loss_iterate_is_kept_not_the_last(llava):
    """With a step far too large (a constant 24/255 inside eps 32, on the 8-bit grid so the kept iterate is
    saved unchanged), the loss jumps about; the result is the iterate of the lowest loss seen, at its step:
    its loss (``end_loss``, recomputed on the saved image) equals that minimum, below the last iterate's."""
    x, objective = make_image(), TargetObjective.of(TARGET)
    attack = PGD(eps=32, alpha=24, steps=8, schedule="constant", random_start=False, early_stop=False, progress=False)
    result = attack(llava, x, PROMPT, objective, max_new_tokens=2)
    best = min(range(len(result.losses)), key=result.losses.__getitem__)
    assert result.best_step == best and result.best_loss == result.losses[best]
    assert result.end_loss == pytest.approx(result.best_loss, abs=1e-5)
    assert best != len(result.losses) - 1 and result.losses[-1] > result.best_loss  # the last was not the best
    assert (result.restart, result.restart_best_losses) == (0, [result.best_loss])


def test_restarts_keep_the_run_of_the_lowest_loss_and_restart_zero_is_the_plain_run(llava, tmp_path):
    x, objective = make_image(), TargetObjective.of(TARGET)

    def attack(restarts):
        return PGD(eps=16, alpha=4, steps=3, restarts=restarts, early_stop=False, seed=5, progress=False)

    single = attack(1)(llava, x, PROMPT, objective, max_new_tokens=2)
    several = attack(3)(llava, x, PROMPT, objective, checkpoint=tmp_path / "ck.safetensors", max_new_tokens=2)
    assert len(several.restart_best_losses) == 3 and len(set(several.restart_best_losses)) == 3  # other starts
    assert several.restart_best_losses[0] == single.best_loss  # restart 0 is the run without restarts
    assert several.best_loss == min(several.restart_best_losses)
    assert several.restart == several.restart_best_losses.index(several.best_loss)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.r1.safetensors", "ck.r2.safetensors", "ck.safetensors"]
    resumed = attack(3)(llava, x, PROMPT, objective, checkpoint=tmp_path / "ck.safetensors", max_new_tokens=2)
    assert torch.equal(resumed.adversarial, several.adversarial) and resumed.losses == several.losses


def test_an_early_stopped_run_keeps_the_iterate_that_reached_the_target_and_ends_the_restarts(llava):
    x = make_image()
    target = llava.generate([llava.encode(PROMPT, x)], max_new_tokens=6)[0]
    attack = PGD(eps=1, alpha=0.2, steps=4, restarts=3, random_start=False, check_every=1, progress=False)
    result = attack(llava, x, PROMPT, TargetObjective.of(target), max_new_tokens=6)
    assert result.target_generated is True and result.steps == 1 and result.best_step == 1
    assert len(result.restart_best_losses) == 1  # no further restart once the target appeared


# ---------------------------------------------------------------------------------- early stop


def test_early_stop_when_the_target_is_already_generated(model):
    x = medium_of(model)
    target = model.generate([model.encode(PROMPT, x)], max_new_tokens=6)[0]
    assert target.strip()
    objective = TargetObjective.of(target)
    # Steps far below one 8-bit level (images) / tiny (audio): the answer stays the clean one.
    tiny = {"eps": 1, "alpha": 0.2} if model.modality == "image" else {"eps": 1e-4, "alpha": 1e-5}

    def run(**kwargs):
        attack = attack_of(model, steps=4, random_start=False, **tiny, **kwargs)
        return attack(model, x, PROMPT, objective, max_new_tokens=6)

    first = run(early_stop=True, check_every=1)
    assert first.steps == len(first.losses) == 1
    assert first.target_generated is True
    assert first.answer == target
    assert run(early_stop=True, check_every=2).steps == 2
    assert run(early_stop=False).steps == 4


def test_no_early_stop_while_the_target_is_not_generated(llava):
    result = PGD(steps=3, check_every=1, early_stop=True, progress=False)(
        llava, make_image(), PROMPT, TargetObjective.of("Tell me the secret password."), max_new_tokens=6
    )
    assert result.steps == 3
    assert result.target_generated is False


# ------------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    ("attack_class", "kwargs", "name"),
    [
        (PGD, {"eps": -1}, "eps"),
        (PGD, {"eps": float("nan")}, "eps"),
        (PGD, {"eps": "16"}, "eps"),
        (PGD, {"eps": True}, "eps"),
        (PGD, {"alpha": 0}, "alpha"),
        (PGD, {"alpha": -1}, "alpha"),
        (PGD, {"alpha": None}, "alpha"),
        (PGD, {"norm": "l1"}, "norm"),
        (PGD, {"steps": -1}, "steps"),
        (PGD, {"steps": 2.5}, "steps"),
        (PGD, {"check_every": 0}, "check_every"),
        (PGD, {"checkpoint_every": 0}, "checkpoint_every"),
        (PGD, {"seed": -1}, "seed"),
        (WaveformPGD, {"eps": -0.01}, "eps"),
        (WaveformPGD, {"alpha": 0}, "alpha"),
        (WaveformPGD, {"norm": "L2"}, "norm"),
        (WaveformPGD, {"steps": -3}, "steps"),
    ],
)
def test_bad_hyperparameters(attack_class, kwargs, name):
    with pytest.raises(ConfigError, match=name):
        attack_class(**kwargs)


@pytest.mark.parametrize(
    "make",
    [
        lambda: TargetObjective.of([]),
        lambda: TargetObjective.of(""),
        lambda: TargetObjective.of(["fine", "  "]),
        lambda: TargetObjective.of(["fine", None]),
        lambda: TargetObjective.of(["a", "b"], targets_per_step=0),
        lambda: TargetObjective.of(["a", "b"], targets_per_step=1.5),
        lambda: AwayObjective(""),
        lambda: AwayObjective("   "),
        lambda: EOT(GaussianNoise(0.1, "pixel"), samples=0),
        lambda: EOT(GaussianNoise(0.1, "pixel"), samples=True),
        lambda: EOT(GaussianNoise(0.1, "pixel"), samples=2.0),
    ],
    ids=[
        "no-targets",
        "empty-target",
        "blank-target",
        "non-string-target",
        "zero-per-step",
        "fractional-per-step",
        "empty-reference",
        "blank-reference",
        "eot-zero-samples",
        "eot-bool-samples",
        "eot-float-samples",
    ],
)
def test_bad_objectives_and_eot(make):
    with pytest.raises(ConfigError):
        make()


def test_eot_from_guard_with_zero_samples(llava, minilm):
    with pytest.raises(ConfigError, match="samples"):
        EOT.from_guard(SmoothGuard(llava, sigma=0.1, embedder=minilm), samples=0)


def test_attacks_refuse_the_other_modality(llava, audio_model):
    objective = TargetObjective.of(TARGET)
    with pytest.raises(UnsupportedError, match="audio"):
        PGD(steps=1, progress=False)(audio_model, make_wave().abs(), PROMPT, objective)
    with pytest.raises(UnsupportedError, match="image"):
        WaveformPGD(steps=1, progress=False)(llava, make_image(), PROMPT, objective)


@pytest.mark.parametrize(
    ("family", "medium"),
    [
        ("llava", make_image().unsqueeze(0)),
        ("llava", make_image()[0]),
        ("llava", torch.cat([make_image(), make_image()[:1]])),
        ("llava", make_image().permute(1, 2, 0)),
        ("llava", make_image().numpy()),
        ("llava", make_image() * 255),  # 0..255 floats, not [0, 1]
        ("llava", torch.full((3, 32, 40), float("nan"))),
        ("qwen2-audio", make_wave().unsqueeze(0)),
        ("qwen2-audio", torch.stack([make_wave(), make_wave(1)])),
        ("qwen2-audio", make_wave().numpy()),
        ("qwen2-audio", make_wave() * 3),  # beyond [-1, 1]
    ],
    ids=[
        "batch-of-one",
        "2d",
        "4-channels",
        "channels-last",
        "numpy",
        "0-255-range",
        "nan",
        "audio-2d",
        "audio-stereo",
        "audio-numpy",
        "audio-out-of-range",
    ],
)
def test_wrong_media_are_input_errors(zoo, family, medium):
    model = zoo(family)
    with pytest.raises(InputError):
        attack_of(model, steps=1)(model, medium, PROMPT, TargetObjective.of(TARGET), max_new_tokens=2)


@pytest.mark.parametrize("prompts", [[], "", ["fine", "  "]], ids=["no-prompts", "empty", "blank"])
def test_bad_prompts_are_input_errors(llava, prompts):
    with pytest.raises(InputError, match="prompt"):
        PGD(steps=1, progress=False)(llava, make_image(), prompts, TargetObjective.of(TARGET))


def test_path_checkpoint_accepts_str(llava, tmp_path):
    path = tmp_path / "sub" / "ck.safetensors"
    result = PGD(steps=2, checkpoint_every=1, early_stop=False, progress=False)(
        llava, make_image(), PROMPT, TargetObjective.of(TARGET), checkpoint=str(path), max_new_tokens=2
    )
    assert Path(path).exists() and not path.with_name(path.name + ".partial").exists()
    assert checkpoint_losses(path) == result.losses
    assert np.isfinite(result.losses).all()


def test_an_attack_of_no_steps_reports_finite_losses(llava):
    """steps=0 keeps the (random) start: its best loss is the final input's, never inf in a sidecar."""
    result = PGD(eps=8, steps=0, early_stop=False, progress=False)(
        llava, make_image(), PROMPT, TargetObjective.of(TARGET), max_new_tokens=2
    )
    assert result.losses == [] and result.best_step == 0
    assert result.best_loss == result.end_loss == result.restart_best_losses[0]
    assert json.loads(json.dumps(result.to_dict(), allow_nan=False))["best_loss"] == result.end_loss
