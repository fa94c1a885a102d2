"""PGD's projection, steps, random start and 8-bit rounding (``smoothguard.attacks.pgd``), checked on
hand-made tensors against values worked out by hand or from the formulas; each docstring names the
mutations (mutmut, README "Mutation testing") it catches. No model is needed: these are the pieces
that keep an attack inside its budget."""

import re

import pytest
import torch

from smoothguard.answers import target_generated
from smoothguard.attacks import PGD, WaveformPGD
from smoothguard.attacks.base import Run, check_range
from smoothguard.errors import InputError

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


def test_waveform_finalize_keeps_the_samples_as_they_are():
    """WaveformPGD.finalize: audio is not put on a grid (the image rounding would destroy it)."""
    x = torch.tensor([0.123456, -0.987654])
    assert torch.equal(WaveformPGD(progress=False).finalize(x, torch.zeros(2)), x)


# range checks and the success test


def test_range_check_names_the_values_and_both_bounds():
    """_check_range: NaN/inf refused; ``min() < low`` / ``max() > high`` (each strict: the bounds
    themselves are allowed); the message's figures."""
    assert torch.equal(check_range(torch.tensor([0.0, 1.0]), (0.0, 1.0), "image pixels"), torch.tensor([0.0, 1.0]))
    with pytest.raises(InputError, match=re.escape("image pixels must lie in [0, 1]; got [-0.5, 1]")):
        check_range(torch.tensor([-0.5, 1.0]), (0.0, 1.0), "image pixels")
    with pytest.raises(InputError, match=re.escape("waveform samples must lie in [-1, 1]; got [0, 1.5]")):
        check_range(torch.tensor([0.0, 1.5]), (-1.0, 1.0), "waveform samples")
    with pytest.raises(InputError, match=re.escape("image pixels contain NaN or infinite values")):
        check_range(torch.tensor([0.5, float("nan")]), (0.0, 1.0), "image pixels")


@pytest.mark.parametrize(
    ("answer", "target", "generated"),
    [
        ("Sure,   HERE is\nhow", "sure, here is how", True),  # case and runs of whitespace ignored
        ("Well. Sure, here is how", "Sure, here is how", True),  # anywhere in the answer
        ("Sure, here", "Sure, here is how", False),
        ("Sure,here is how", "Sure, here is how", False),  # a space is not nothing
    ],
)
def test_target_generated_ignores_case_and_whitespace_runs_only(answer, target, generated):
    """target_generated: ``lower()`` dropped on either side, ``split()`` for ``split(" ")``, ``in`` for
    ``==`` or ``not in``."""
    assert target_generated(answer, target) is generated


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


def test_start_resumes_from_an_existing_checkpoint(tmp_path):
    """_start: with a checkpoint file there, ``_load_checkpoint(checkpoint, x0, run_config, restart)`` (any
    argument -> None or dropped): the saved iterate, the kept best one and the losses come back."""
    attack = _pgd(eps=8)
    x0 = torch.full((3, 2, 2), 0.5)
    saved, best = x0 + 4 * U, x0 - 2 * U
    run_config = {**attack.config(), "prompts": ["p"]}
    done = Run(best, [2.5, 1.5], best_loss=1.5, best_step=1)
    attack._save_checkpoint(tmp_path / "run.safetensors", saved, x0, done, run_config, 0)
    run = attack._begin(x0, run_config, tmp_path / "run.safetensors", 0, 0)
    assert torch.equal(run.resume_from, saved) and torch.equal(run.x, best)
    assert run.losses == [2.5, 1.5] and run.best_step == 1 and run.best_loss == 1.5 and not run.reached
