"""Seeded Gaussian noise in its three spaces."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from smoothguard import ConfigError, SmoothGuard, load_model, noise
from smoothguard.noise import (
    GaussianNoise,
    content_key,
    copy_seed,
    copy_seeds,
    parse_sigmas,
    pixel_sigma,
    query_seed,
    validate_sigma,
)
from support.common import exact, names_word

PROMPT = "What is in the image?"


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


def noise_of(guard, query, copies, clean=False):
    key = guard.model.normalized_key
    return [q.media[key] for q in guard.candidates(query, copies, clean=clean)]


def test_copy_i_is_the_same_noise_wherever_it_is_drawn(tiny_llava, minilm):
    guard = SmoothGuard(tiny_llava, embedder=minilm, sigma=0.5, noise_space="pixel", seed=11)
    query = guard.prepare([PROMPT], [torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0))])[0]
    full = noise_of(guard, query, range(10))
    assert [torch.equal(a, b) for a, b in zip(noise_of(guard, query, range(3, 6)), full[3:6], strict=True)] == [
        True
    ] * 3
    assert torch.equal(noise_of(guard, query, [7])[0], full[7])
    assert not torch.equal(full[0], full[1])
    other_seed = noise_of(guard.replace(seed=12), query, range(1))[0]
    assert not torch.equal(other_seed, full[0])
    assert copy_seed(11, 3) == copy_seed(11, 3) != copy_seed(11, 4)


class _FakeAdapter:
    """The three adapter members ``GaussianNoise.copies`` uses; it records what it preprocesses."""

    normalized_key = "pixel_values"

    def __init__(self) -> None:
        self.batches: list[tuple[int, ...]] = []

    def preprocess(self, media: torch.Tensor) -> dict[str, torch.Tensor]:
        self.batches.append(tuple(media.shape))
        return {"pixel_values": media * 2.0, "mask": torch.ones(1)}

    def split_media(self, inputs: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
        return [{"pixel_values": inputs["pixel_values"][i]} for i in range(n)]


def test_validate_sigma_refuses_a_string_with_config_error():
    """``isinstance(sigma, bool) or not isinstance(...)`` -> ``and``: a string sigma reaches math.isfinite
    (TypeError) instead of ConfigError."""
    with pytest.raises(ConfigError, match="finite number"):
        validate_sigma("0.1")


@pytest.mark.parametrize("call", [lambda: query_seed(-1, "k"), lambda: copy_seed(-1, 0)])
def test_seed_errors_name_the_seed(call):
    """``check_int("seed", ...)`` name -> None / "XXseedXX" / "SEED" in query_seed and copy_seed."""
    with pytest.raises(ConfigError) as caught:
        call()
    assert names_word(str(caught.value), "seed")


def test_copy_index_error_names_the_copy_index():
    """``check_int("copy index", ...)`` name -> None / "XXcopy indexXX" / "COPY INDEX" in copy_seed."""
    with pytest.raises(ConfigError) as caught:
        copy_seed(0, -1)
    assert names_word(str(caught.value), "copy index")


def test_query_seed_follows_the_documented_rule():
    """blake2b ``digest_size=8`` dropped (a 64-byte digest) in query_seed: the seed must be
    SeedSequence([seed, little-endian 8-byte BLAKE2b of the key]), computed here independently."""
    digest = int.from_bytes(hashlib.blake2b(b"item-7", digest_size=8).digest(), "little")
    expected = int(np.random.SeedSequence([3, digest]).generate_state(1)[0])
    assert query_seed(3, "item-7") == expected


def test_content_key_does_not_depend_on_the_medium_dtype():
    """``.to("cpu", torch.float32)`` -> ``.to("cpu", None)`` / ``.to("cpu")`` in content_key: a float64
    medium with the same values must name the same query as its float32 twin (the digest is of float32)."""
    medium = torch.tensor([[0.25, 0.5], [0.75, 1.0]])
    assert content_key("p", medium.double()) == content_key("p", medium)


def test_unknown_space_error_lists_the_spaces():
    """``ConfigError(f"unknown noise space ...")`` -> ``ConfigError(None)``, and the ", " separator of the
    list of spaces -> "XX, XX"."""
    with pytest.raises(ConfigError) as caught:
        GaussianNoise(0.1, "pixels")
    assert "'pixels'" in str(caught.value) and "normalized, pixel, waveform" in str(caught.value)


def test_gaussian_noise_checks_sigma_against_its_space():
    """``validate_sigma(self.sigma, self.space)`` -> ``validate_sigma(self.sigma, None)`` / no space:
    sigma 2 is fine in normalized space but over the pixel-space maximum (1)."""
    GaussianNoise(2.0, "normalized")
    with pytest.raises(ConfigError, match="pixel space"):
        GaussianNoise(2.0, "pixel")


def test_draw_of_no_seeds_is_an_empty_batch():
    """``if rows else torch.zeros((0, *shape))``: -> ``or True`` (stack of nothing raises), zeros(None),
    zeros((1, *shape))."""
    drawn = GaussianNoise(0.1, "pixel").draw((3, 2), [])
    assert drawn.shape == (0, 3, 2)


def test_normalized_copies_preprocess_the_medium_as_a_batch_of_one_when_no_clean_inputs_are_given():
    """``adapter.preprocess(media.unsqueeze(0)) if clean is None else clean`` -> ``and False`` (clean None is
    indexed), preprocess(None), unsqueeze(None), unsqueeze(1), ``is not None``."""
    adapter = _FakeAdapter()
    media = torch.full((3, 2, 2), 0.5)
    copies = GaussianNoise(0.0, "normalized").copies(adapter, media, [1, 2])
    assert adapter.batches == [(1, 3, 2, 2)]
    assert len(copies) == 2 and torch.equal(copies[0]["pixel_values"], torch.ones(1, 3, 2, 2))


def test_normalized_copies_use_the_clean_inputs_given():
    """``if clean is None else clean`` -> ``or True``: the caller's preprocessed ``clean`` must be used, not
    recomputed."""
    adapter = _FakeAdapter()
    clean = {"pixel_values": torch.full((1, 3, 2, 2), 7.0), "mask": torch.zeros(1)}
    copies = GaussianNoise(0.0, "normalized").copies(adapter, torch.zeros(3, 2, 2), [1], clean=clean)
    assert adapter.batches == []
    assert torch.equal(copies[0]["pixel_values"], clean["pixel_values"]) and torch.equal(
        copies[0]["mask"], clean["mask"]
    )


def test_pixel_copies_are_grouped_one_at_a_time_when_one_copy_fills_the_budget(monkeypatch):
    """``group = max(1, MAX_NOISY_VALUES // ...)`` -> ``max(2, ...)``, and ``copies +=`` -> ``copies =``:
    with room for less than one copy per group each copy is its own group and every group is kept."""
    monkeypatch.setattr(noise, "MAX_NOISY_VALUES", 4)
    adapter = _FakeAdapter()
    copies = GaussianNoise(0.1, "pixel").copies(adapter, torch.full((3, 2, 2), 0.5), [1, 2, 3])
    assert adapter.batches == [(1, 3, 2, 2)] * 3
    assert len(copies) == 3


def test_pixel_copies_of_a_one_value_medium_fill_the_group(monkeypatch):
    """``MAX_NOISY_VALUES // max(media.numel(), 1)`` -> ``max(media.numel(), 2)``: a one-value medium fits
    MAX_NOISY_VALUES copies per group, not half of them."""
    monkeypatch.setattr(noise, "MAX_NOISY_VALUES", 2)
    adapter = _FakeAdapter()
    GaussianNoise(0.1, "waveform").copies(adapter, torch.zeros(1), [1, 2])
    assert adapter.batches == [(2, 1)]


def test_perturb_keeps_the_input_dtype():
    """``.to(device=x.device, dtype=x.dtype)`` -> ``dtype=None`` / no dtype in perturb: float32 noise would
    promote a float16 input to float32."""
    noisy = GaussianNoise(0.1, "pixel").perturb(torch.full((4,), 0.5, dtype=torch.float16), [1])
    assert noisy.dtype == torch.float16


def peak_memory_of(code: str) -> dict:
    """Run ``code`` in a fresh interpreter that prints one JSON line; the resident-set growth is measured."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pixel_noise_memory_does_not_grow_with_copies(tiny_llava_dir):
    # 16 copies of a 2048x2048 image in pixel space: all at once the noise alone would be 16 x 48 MiB =
    # 768 MiB, and as much again for the noisy copies; drawn in groups of MAX_NOISY_VALUES it stays small.
    code = f"""
import json, resource
import torch
from smoothguard import SmoothGuard, load_model
model = load_model({str(tiny_llava_dir)!r})
image = torch.rand(3, 2048, 2048, generator=torch.Generator().manual_seed(0))
guard = SmoothGuard(model, sigma=0.1, noise_space="pixel", num_copies=16)
query = guard.prepare(["hi"], [image])[0]
guard.candidates(query, range(1))  # warm up the resize kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
inputs = guard.candidates(query, range(16))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"growth_mib": (after - before) / 1024, "copies": len(inputs)}}))
"""
    measured = peak_memory_of(code)
    assert measured["copies"] == 17
    assert measured["growth_mib"] < 400, measured


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (a CUDA GPU) to compare with")
def test_the_noise_is_the_same_on_every_device(tiny_llava_dir, image_file):
    guards = [SmoothGuard(load_model(tiny_llava_dir, device=device), sigma=0.5) for device in ("cpu", "cuda")]
    noisy = []
    for guard in guards:
        query = guard.prepare([PROMPT], [image_file])[0]
        noisy.append(guard.candidates(query, range(3), clean=False)[0].media["pixel_values"].cpu())
    assert torch.allclose(noisy[0], noisy[1], atol=1e-5)


@pytest.mark.parametrize("text", ["", "0.1,x", "0.1,0.1", "-0.1"])
def test_parse_sigmas_rejects_bad_lists(text):
    with pytest.raises(ConfigError):
        parse_sigmas(text)
    assert parse_sigmas("0,0.05, 0.1") == [0.0, 0.05, 0.1]


def test_parse_sigmas_checks_each_sigma_in_its_space():
    from smoothguard.noise import parse_sigmas

    assert parse_sigmas("0.25,1.5", "normalized") == [0.25, 1.5]
    with pytest.raises(ConfigError, match=r"^sigma 1\.5 is over the largest sensible value in pixel space"):
        parse_sigmas("0.25,1.5", "pixel")


@pytest.mark.parametrize("space", [None, "pixel"])
def test_a_purifier_is_allowed_with_pixel_noise_or_none_chosen_yet(space):
    from smoothguard.noise import check_purifier_space

    check_purifier_space(space)


@pytest.mark.parametrize("space", ["normalized", "waveform"])
def test_a_purifier_with_other_noise_is_refused_in_one_line_everywhere(space, tiny_llava):
    """The one rule, wherever a purifier is set: the config, the perturber and EOT give the same message."""
    from smoothguard import GuardConfig
    from smoothguard.attacks.eot import EOT
    from smoothguard.noise import GaussianNoise, check_purifier_space

    message = (
        f"a purifier cleans [0, 1] pixels: use noise space pixel, not {space} "
        "(sigma in pixel units; the paper's 0.1 normalized is ~0.027 pixel for CLIP)"
    )
    with pytest.raises(ConfigError, match=exact(message)):
        check_purifier_space(space)
    with pytest.raises(ConfigError, match=exact(message)):
        GuardConfig(noise_space=space, purifier="testbed-denoiser")
    noise = GaussianNoise(0.1, space)
    with pytest.raises(ConfigError, match=exact(message)):
        EOT(noise, 2, lambda x, sigma: x)
    with pytest.raises(ConfigError, match=exact(message)):
        noise.copies(tiny_llava, torch.rand(3, 8, 8), [0], purifier=lambda x, sigma: x)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.1,x", "--sigmas must be comma-separated numbers such as 0,0.05,0.1; got '0.1,x'"),
        ("", "--sigmas needs at least one value and no repeats; got ''"),
        ("0.1,0.1", "--sigmas needs at least one value and no repeats; got '0.1,0.1'"),
    ],
)
def test_parse_sigmas_says_what_a_sigma_list_is(text, message):
    """parse_sigmas: both messages -> None."""
    with pytest.raises(ConfigError, match=exact(message)):
        parse_sigmas(text)


def test_a_purifiers_output_is_clamped_to_the_pixel_range(tiny_llava):
    """copies: ``purifier(...).clamp(0, 1)`` -> ``clamp(None, 1)`` / ``clamp(0, None)`` / ``clamp(0, 2)`` /
    dropped bound: a purifier that overshoots both ends gives copies in [0, 1] that reach both ends."""
    seen = []

    def overshoot(images: torch.Tensor, sigma: float) -> torch.Tensor:
        out = images * 4 - 1.5
        seen.append(out)
        return out

    noise = GaussianNoise(0.1, "pixel")
    pixels = torch.linspace(0, 1, 3 * 8 * 8).reshape(3, 8, 8)
    copies = noise.copies(tiny_llava, pixels, [0, 1], purifier=overshoot)
    assert seen[0].min() < 0 and seen[0].max() > 1
    inputs = tiny_llava.preprocess(seen[0].clamp(0, 1))
    key = tiny_llava.normalized_key
    assert torch.allclose(torch.stack([c[key][0] for c in copies]), inputs[key])
