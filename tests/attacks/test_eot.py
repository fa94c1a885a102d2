"""Tests of ``smoothguard.attacks.eot``."""

import pytest
import torch

from smoothguard import ConfigError, SmoothGuard
from smoothguard.attacks import EOT, PGD, TargetObjective
from smoothguard.attacks.eot import step_seed
from smoothguard.noise import copy_seeds
from support.attacks import grid_linf, make_image, medium_of, on_grid
from support.guard import Recorder, grey

IMAGE_FAMILIES = ["llava", "qwen2-vl", "qwen2.5-vl"]


TARGET = "Sure, here is the answer."


PROMPT = "What is in the image?"


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


def test_eot_from_guard_with_zero_samples(llava, minilm):
    with pytest.raises(ConfigError, match="samples"):
        EOT.from_guard(SmoothGuard(llava, sigma=0.1, embedder=minilm), samples=0)


def test_eot_gradient_runs_through_noise_and_purifier(tiny_llava, minilm):
    """The adaptive attack sees the purifier: an erasing purifier leaves no gradient on the pixels, a
    half-keeping one halves it, and every step draws fresh noise through it."""
    pixels = 0.3 + 0.4 * torch.rand(3, 30, 30)  # sigma 0.01: no copy reaches the [0, 1] clamps

    def gradient(purifier) -> torch.Tensor:
        guard = SmoothGuard(tiny_llava, embedder=minilm, purifier=purifier, sigma=0.01)
        eot = EOT.from_guard(guard, samples=3)
        assert eot.purifier is guard.purifier
        x = pixels.clone().requires_grad_()
        inputs = eot.media(tiny_llava, x, seed=0, step=0)
        sum(batch["pixel_values"].sum() for batch in inputs).backward()
        return x.grad

    keep_all = gradient(lambda images, sigma: images)
    assert keep_all.abs().sum() > 0
    assert torch.allclose(gradient(Recorder(keep=0.5)), keep_all / 2, atol=1e-6)
    assert gradient(grey).abs().sum() == 0
    recorder = Recorder()
    eot = EOT.from_guard(SmoothGuard(tiny_llava, embedder=minilm, purifier=recorder, sigma=0.1), samples=2)
    eot.media(tiny_llava, pixels, seed=0, step=0)
    eot.media(tiny_llava, pixels, seed=0, step=1)
    # Per step: the noisy copies, then the clean candidate, each through the purifier.
    (step0, _), (clean0, _), (step1, _), (clean1, _) = recorder.calls
    assert step0.shape[0] == 2 and not torch.equal(step0, step1)
    assert torch.equal(clean0, pixels.unsqueeze(0)) and torch.equal(clean1, clean0)  # no noise on the clean one
    assert eot.describe()["purifier"] == {"name": "recorder"} and eot.describe()["purify_clean"] is True
    with pytest.raises(ConfigError, match="use noise space pixel, not normalized"):
        EOT(SmoothGuard(tiny_llava, embedder=minilm).noise, 2, recorder)


def test_eot_sees_the_clean_candidate_as_the_guard_votes_over_it(tiny_llava, minilm):
    """EOT.from_guard adds the clean input after the noisy copies: through the purifier, told the guard's
    sigma, exactly as ``guard.purified_clean`` makes it (and preprocessed as the guard does); unpurified
    when the guard does not purify its clean candidate; absent with ``clean=False``."""
    pixels = 0.3 + 0.4 * torch.rand(3, 30, 30, generator=torch.Generator().manual_seed(0))
    recorder = Recorder()
    guard = SmoothGuard(tiny_llava, embedder=minilm, purifier=recorder, sigma=0.2, num_copies=2)
    media = EOT.from_guard(guard, samples=2).media(tiny_llava, pixels, seed=0, step=0)
    assert len(media) == 3 and recorder.calls[-1][1] == 0.2
    expected = tiny_llava.preprocess(guard.purified_clean(pixels))
    assert torch.equal(media[2]["pixel_values"], expected["pixel_values"])
    unpurified = guard.replace(purify_clean=False)
    media = EOT.from_guard(unpurified, samples=2).media(tiny_llava, pixels, seed=0, step=0)
    assert torch.equal(media[2]["pixel_values"], tiny_llava.preprocess(pixels.unsqueeze(0))["pixel_values"])
    assert EOT.from_guard(unpurified, samples=2).describe()["purify_clean"] is False
    alone = EOT(guard.noise, 2, recorder, clean=False)
    assert len(alone.media(tiny_llava, pixels, seed=0, step=0)) == alone.candidates == 2
    assert EOT.from_guard(guard, samples=2).candidates == 3
