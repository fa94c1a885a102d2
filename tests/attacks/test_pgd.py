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

from smoothguard import ConfigError, InputError
from smoothguard.attacks import EOT, PGD, AwayObjective, TargetObjective, WaveformPGD
from smoothguard.errors import UnsupportedError
from smoothguard.inputs import load_image
from smoothguard.noise import GaussianNoise
from support.attacks import attack_of, grid_linf, make_image, make_wave, medium_of, on_grid

TARGET = "Sure, here is the answer."


PROMPT = "What is in the image?"


# Three targets of different token lengths (right padding is exercised), two drawn per step.
TARGETS = ("Sure, here is the answer.", "No.", "The sky is clear today. One, two, three, four, five.")


@pytest.fixture
def audio_model(zoo):
    return zoo("qwen2-audio")


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


U = 1 / 255


def _pgd(**kwargs) -> PGD:
    return PGD(progress=False, early_stop=False, **kwargs)


# one step


def test_linf_step_moves_every_value_by_alpha_against_the_gradient_sign():
    """_step (L-inf): ``x - alpha * grad.sign()``; alpha in 1/255 units (``* unit`` dropped or
    ``/``); the sign flipped; a zero gradient leaves the value alone."""
    x = torch.full((3,), 0.5)
    stepped = _pgd(alpha=2)._step(x, torch.tensor([3.0, -0.001, 0.0]), 0)
    assert torch.allclose(stepped, torch.tensor([0.5 - 2 * U, 0.5 + 2 * U, 0.5]))


def test_l2_step_has_length_alpha_along_the_gradient():
    """_step (L2): ``x - alpha * grad / ||grad||``: a (3, 4) gradient moves by alpha * (0.6, 0.8); a zero
    gradient (norm clamped at 1e-12, not 0) moves nothing and makes no NaN."""
    attack = _pgd(alpha=5, norm="l2")
    stepped = attack._step(torch.zeros(2), torch.tensor([3.0, 4.0]), 0)
    assert torch.allclose(stepped, torch.tensor([-5 * U * 0.6, -5 * U * 0.8]))
    assert torch.equal(attack._step(torch.ones(2), torch.zeros(2), 0), torch.ones(2))


# projection


def test_linf_projection_clamps_each_value_to_the_ball_and_the_pixel_range():
    """_project (L-inf): ``delta.clamp(-eps, eps)`` (either bound changed or dropped) then
    ``clamp(0, 1)``; eps in 1/255 units."""
    x0 = torch.tensor([0.5, 0.5, 0.5, 0.99, 0.01])
    x = torch.tensor([0.9, 0.1, 0.52, 1.5, -0.5])
    projected = _pgd(eps=8)._project(x, x0)
    expected = torch.tensor([0.5 + 8 * U, 0.5 - 8 * U, 0.52, 1.0, 0.0])
    assert torch.allclose(projected, expected)


def test_l2_projection_rescales_only_a_perturbation_longer_than_eps():
    """_project (L2): ``delta * min(1, eps / ||delta||)``: a (3, 4) * 10/255 perturbation (length 50/255)
    shrinks to length 5/255 along itself (``clamp(max=1.0)`` dropped: a short one would grow); one of
    length 2.5/255 stays; the norm clamp keeps a zero perturbation at zero."""
    attack = _pgd(eps=5, norm="l2")
    x0 = torch.full((2,), 0.5)
    long = attack._project(x0 + torch.tensor([30.0, 40.0]) * U, x0)
    assert torch.allclose(long, x0 + torch.tensor([3.0, 4.0]) * U)
    short = x0 + torch.tensor([1.5, 2.0]) * U
    assert torch.allclose(attack._project(short, x0), short)
    assert torch.equal(attack._project(x0.clone(), x0), x0)


def test_unconstrained_projection_only_clamps_to_the_range():
    """_project with ``eps=None``: no ball (the ``is not None`` test inverted), still ``clamp(*bounds)``;
    for a waveform attack the bounds are [-1, 1], not [0, 1]."""
    x = torch.tensor([-0.5, 0.3, 1.5])
    assert torch.equal(_pgd(eps=None)._project(x, torch.zeros(3)), torch.tensor([0.0, 0.3, 1.0]))
    wave = WaveformPGD(eps=None, progress=False, early_stop=False)
    assert torch.equal(wave._project(torch.tensor([-1.5, -0.5, 2.0]), torch.zeros(3)), torch.tensor([-1.0, -0.5, 1.0]))


# the start


def start(attack, x0):
    """``attack._begin`` of a fresh run (no checkpoint, restart 0, the attack's seed): its iterate and losses."""
    run = attack._begin(x0, {}, None, 0, attack.seed)
    return run.x, run.losses


def test_start_without_random_start_is_a_copy_of_the_input():
    """_start: ``random_start=False`` returns ``x0.clone()`` (not ``x0`` itself, which the steps would
    then change in place) and no losses."""
    x0 = torch.full((3, 2, 2), 0.5)
    x, losses = start(_pgd(random_start=False), x0)
    assert torch.equal(x, x0) and x is not x0 and losses == []


def test_linf_random_start_is_the_seeded_uniform_draw_in_the_ball():
    """_start (L-inf): ``x0 + eps * (2 U - 1)`` from a generator seeded with ``step_seed(seed, 0,
    stream=3)`` = seed * 1,000,003 + 3; the ``* 2 - 1`` (changed: a one-sided start), the stream or the
    seed changed; then projected."""
    x0 = torch.full((3, 4, 4), 0.5)
    x, _ = start(_pgd(eps=16, seed=7), x0)
    generator = torch.Generator().manual_seed(7 * 1_000_003 + 3)
    expected = 0.5 + 16 * U * (torch.rand(x0.shape, generator=generator) * 2 - 1)
    assert torch.allclose(x, expected)
    assert (x - x0).min() < -8 * U and (x - x0).max() > 8 * U  # both sides of the ball are used


def test_l2_random_start_has_a_random_radius_within_eps():
    """_start (L2): the uniform draw is normalised to the unit sphere and scaled by a second uniform
    draw from the same generator, then by eps: its length is eps * that draw."""
    x0 = torch.full((3, 4, 4), 0.5)
    x, _ = start(_pgd(eps=16, norm="l2", seed=2), x0)
    generator = torch.Generator().manual_seed(2 * 1_000_003 + 3)
    direction = torch.rand(x0.shape, generator=generator) * 2 - 1
    radius = torch.rand((), generator=generator)
    expected = 0.5 + 16 * U * direction / direction.norm() * radius
    assert torch.allclose(x, expected)
    assert ((x - x0).norm() / U).item() == pytest.approx(16 * radius.item(), rel=1e-5)


def test_unconstrained_random_start_is_uniform_over_the_range():
    """_start with ``eps=None`` (Qi et al.): ``low + (high - low) * U``, ignoring ``x0``; for a waveform
    attack over [-1, 1]."""
    x0 = torch.zeros(1000)
    generator = torch.Generator().manual_seed(3)  # seed 0: step_seed(0, 0, stream=3) = 3
    draw = torch.rand(x0.shape, generator=generator)
    pixels, _ = start(_pgd(eps=None), x0)
    assert torch.equal(pixels, draw)
    wave, _ = start(WaveformPGD(eps=None, progress=False, early_stop=False), x0)
    assert torch.allclose(wave, -1 + 2 * draw)


# the 8-bit rounding of the saved result


def test_unconstrained_finalize_rounds_to_the_nearest_level():
    """finalize with ``eps=None``: ``round(x * 255).clamp(0, 255) / 255`` (``levels`` changed, floor for
    round, a clamp bound changed)."""
    x = torch.tensor([0.1 * U, 0.6 * U, 254.4 * U, 1.2, -0.3])
    assert torch.equal(_pgd(eps=None).finalize(x, torch.zeros(5)), torch.tensor([0.0, 1.0, 254.0, 255.0, 0.0]) / 255)


def test_linf_finalize_keeps_the_rounded_result_inside_the_ball():
    """finalize (L-inf): the rounded level is kept within ``[ceil(x0*255 - eps), floor(x0*255 + eps)]``,
    itself inside [0, 255]. x0 off the grid at 100.5/255 with eps 2: the ball [98.5, 102.5] holds levels
    99..102; x at 102.6 rounds to 103 and is pulled back to 102, x at 98.4 rounds to 98 and goes up to
    99 (ceil/floor swapped or dropped, the 1e-6 slack with the wrong sign, minimum/maximum swapped);
    near the range's ends the levels stay in 0..255."""
    x0 = torch.tensor([100.5, 100.5, 100.5, 0.5, 254.5]) * U
    x = torch.tensor([102.6, 98.4, 101.2, -3.0, 258.0]) * U
    levels = (_pgd(eps=2).finalize(x, x0) * 255).round()
    assert levels.tolist() == [102.0, 99.0, 101.0, 0.0, 255.0]


def test_linf_finalize_allows_exactly_eps_on_the_grid():
    """finalize (L-inf): from an on-grid x0 a change of exactly eps levels is allowed (the 1e-6 slack
    protects it from float error: ``x0 * 255 + eps`` may land a hair under the integer)."""
    x0 = torch.tensor([0.2, 0.7])  # 51/255 and 178.5/255
    x = x0 + torch.tensor([8.0, -8.0]) * U
    final = _pgd(eps=8).finalize(x, x0)
    assert ((final - x0).abs().max() / U).item() <= 8 + 1e-4
    assert (final * 255).round().tolist() == [59.0, 171.0]


def test_l2_finalize_shrinks_a_perturbation_that_rounding_pushed_outside():
    """finalize (L2), eps 3 levels, x0 = 127.5/255 (off the grid: every rounded value is at least half
    a level away; torch rounds 127.5 half to even, to 128). A perturbation (1.2, 0, 0, 0) rounds to
    (129, 128, 128, 128), length sqrt(1.5^2 + 3 * 0.5^2) = 1.73 <= 3: kept as rounded. One of
    (2.2, 2.2, 0, 0), length 3.11, rounds to (130, 130, 128, 128), length sqrt(13) = 3.61 > 3: the
    bisection on the shrink factor s finds the largest on-grid fit, (129, 129, 128, 128) (s just under
    1/2.2 * 2), length sqrt(5) (the ``<= eps`` tests inverted, the halves of the bisection swapped, the
    shrink applied to x instead of the perturbation)."""
    attack = _pgd(eps=3, norm="l2")
    x0 = torch.full((4,), 127.5 * U)
    kept = attack.finalize(x0 + torch.tensor([1.2, 0.0, 0.0, 0.0]) * U, x0)
    assert (kept * 255).round().tolist() == [129.0, 128.0, 128.0, 128.0]
    shrunk = attack.finalize(x0 + torch.tensor([2.2, 2.2, 0.0, 0.0]) * U, x0)
    assert (shrunk * 255).round().tolist() == [129.0, 129.0, 128.0, 128.0]
    assert torch.allclose(shrunk * 255, (shrunk * 255).round(), atol=1e-4)  # on the 8-bit grid
    assert ((shrunk - x0).norm() / U).item() == pytest.approx(5**0.5, abs=1e-3)


# range checks and the success test


def _largest_fitting_shrink(x: torch.Tensor, x0: torch.Tensor, eps_levels: float) -> torch.Tensor:
    """A second implementation of finalize's L2 shrink: scan s from 1 down in steps of 1e-4 and keep the
    first on-grid x0 + s (x - x0) within eps (in levels)."""
    for s in torch.linspace(1.0, 0.0, 10_001).tolist():
        candidate = ((x0 + s * (x - x0)) * 255).round().clamp(0, 255)
        if (candidate - x0 * 255).norm() <= eps_levels:
            return candidate
    raise AssertionError("no shrink fits")


def test_l2_finalize_agrees_with_a_scan_of_the_shrink_factor():
    """finalize (L2) on an uneven case: x0 off the grid at different levels, a perturbation of length 12
    levels that rounding pushes past eps 12. The bisection must land on the same grid point as a plain scan
    of the shrink factor (catches ``x - x0`` -> ``x + x0``, the fit test of the whole perturbation
    -> ``+ x0``, the midpoint ``(low + high) / 2`` -> ``- high`` or ``/ 3``, and a strict ``< eps``)."""
    generator = torch.Generator().manual_seed(4)
    x0 = ((torch.rand(3, 4, 4, generator=generator) * 200 + 20).floor() + 0.5) / 255
    direction = torch.randn(3, 4, 4, generator=generator)
    x = x0 + direction / direction.norm() * 12 * U
    rounded = ((x * 255).round() - x0 * 255).norm().item()
    assert rounded > 12  # rounding alone would leave the budget
    final = _pgd(eps=12, norm="l2").finalize(x, x0)
    assert torch.equal((final * 255).round(), _largest_fitting_shrink(x, x0, 12))


def test_linf_finalize_slack_never_takes_away_a_whole_level():
    """finalize (L-inf): the bounds ``ceil(x0*255 - eps - 1e-6)`` and ``floor(x0*255 + eps + 1e-6)``; with
    the 1e-6 on the other side, x0 = 16/255 with eps 8 could not reach level 8, nor x0 = 0 level 8. (Near
    255 float32 cannot hold the 1e-6, so the check is made low in the range.)"""
    attack = _pgd(eps=8)
    x0 = torch.tensor([16 / 255])
    down = attack.finalize(x0 - 8 * U, x0)
    up = attack.finalize(torch.tensor([8 * U]), torch.tensor([0.0]))
    assert (down * 255).round().item() == 8.0 and (up * 255).round().item() == 8.0


def test_l2_finalize_keeps_values_in_the_pixel_range():
    """finalize (L2): on_grid's ``clamp(0, 255)`` (either bound dropped, or the lower moved to 1): values
    asked for outside [0, 1] come back at its ends, and a zero pixel left alone stays zero."""
    attack = _pgd(eps=64, norm="l2")
    x0 = torch.tensor([0.0, 1.0, 0.0])
    final = attack.finalize(torch.tensor([-0.05, 1.05, 0.0]), x0)
    assert final.tolist() == [0.0, 1.0, 0.0]


def test_l2_step_normalises_a_short_gradient_too():
    """_step (L2): ``grad.norm().clamp_min(1e-12)`` -> ``clamp_min(1.000000000001)``: a gradient of length
    0.5 must still give a step of length alpha."""
    stepped = _pgd(alpha=5, norm="l2")._step(torch.zeros(2), torch.tensor([0.3, 0.4]), 0)
    assert torch.allclose(stepped, torch.tensor([-5 * U * 0.6, -5 * U * 0.8]))


def test_l2_random_start_of_one_value_is_on_its_unit_sphere_times_the_radius():
    """_start (L2): ``noise.norm().clamp_min(1e-12)`` -> ``clamp_min(1.000000000001)``: a one-value medium's
    draw has length below 1 and must still be normalised (to +-1) before the radius scales it."""
    x0 = torch.tensor([0.5])
    x, _ = start(_pgd(eps=16, norm="l2", seed=0), x0)
    generator = torch.Generator().manual_seed(3)
    draw = torch.rand(1, generator=generator) * 2 - 1
    radius = torch.rand((), generator=generator)
    assert abs(draw.item()) < 1
    assert torch.allclose(x, 0.5 + 16 * U * torch.sign(draw) * radius)
