"""Seeded Gaussian noise in its three spaces."""

import pytest
import torch

from smoothguard import ConfigError
from smoothguard.noise import GaussianNoise, copy_seeds, pixel_sigma


def test_same_seed_same_noise_other_seed_other_noise():
    x = torch.rand(3, 8, 8)
    noise = GaussianNoise(0.1, "pixel")
    assert torch.equal(noise.perturb(x, copy_seeds(1, range(4))), noise.perturb(x, copy_seeds(1, range(4))))
    assert not torch.equal(noise.perturb(x, copy_seeds(1, range(4))), noise.perturb(x, copy_seeds(2, range(4))))


def test_copies_are_independent_and_scaled():
    noise = GaussianNoise(0.3, "normalized")
    copies = noise.perturb(torch.zeros(3, 64, 64), copy_seeds(0, range(8)))
    assert copies.shape == (8, 3, 64, 64)
    assert copies.std().item() == pytest.approx(0.3, rel=0.02)
    assert not torch.equal(copies[0], copies[1])


@pytest.mark.parametrize(("space", "low", "high"), [("pixel", 0.0, 1.0), ("waveform", -1.0, 1.0)])
def test_clamping(space, low, high):
    x = torch.full((1000,), high)
    clamped = GaussianNoise(0.5, space).perturb(x, copy_seeds(0, range(2)))
    assert clamped.min() >= low and clamped.max() <= high
    free = GaussianNoise(0.5, space, clamp=False).perturb(x, copy_seeds(0, range(2)))
    assert free.max() > high


def test_normalized_space_is_never_clamped():
    assert GaussianNoise(1.0, "normalized").perturb(torch.zeros(1000), copy_seeds(0, range(1))).abs().max() > 1


def test_conversion_between_spaces():
    assert pixel_sigma(0.1, [0.26862954, 0.26130258, 0.27577711]) == pytest.approx(
        [0.026862954, 0.026130258, 0.027577711]
    )


@pytest.mark.parametrize(("sigma", "space"), [(-1.0, "pixel"), (float("inf"), "pixel"), (0.1, "latent")])
def test_validation(sigma, space):
    with pytest.raises(ConfigError):
        GaussianNoise(sigma, space)


@pytest.mark.parametrize(("space", "low", "high"), [("pixel", 0.0, 1.0), ("waveform", -1.0, 1.0)])
def test_clamp_reaches_both_bounds_of_each_space(space, low, high):
    """Mutations caught: the waveform clamp [-1, 1] -> [0, 1], the pixel clamp [0, 1] -> [-1, 1] (or either
    bound dropped). Inputs sit near both bounds; the clamped copies must equal an independent clamp of the
    unclamped copies, hitting each bound exactly and leaving values inside untouched."""
    x = torch.cat([torch.full((500,), low + 0.01), torch.full((500,), high - 0.01)])
    seeds = copy_seeds(3, range(3))
    free = GaussianNoise(0.3, space, clamp=False).perturb(x, seeds)
    clamped = GaussianNoise(0.3, space).perturb(x, seeds)
    expected = torch.where(free < low, torch.full_like(free, low), torch.where(free > high, high, free))
    assert torch.equal(clamped, expected)
    assert clamped.min().item() == low and clamped.max().item() == high
    assert (free < low).any() and (free > high).any()
    inside = (free > low) & (free < high)
    assert torch.equal(clamped[inside], free[inside])
    if space == "waveform":
        assert (clamped < 0).any()  # negative samples survive: not clamped to [0, 1]
