"""Tests of ``smoothguard.testbed.scenes``."""

import random

import torch

from smoothguard.testbed.data import (
    scene_pixels,
)
from smoothguard.testbed.scenes import (
    BADGE_COLOR,
    BADGE_MARGIN,
    BADGE_SIZE,
    IMAGE_SIZE,
    POPULAR,
    all_pairs,
    render,
    sample_scene,
)
from smoothguard.testbed.tasks import (
    negative_pair,
)


def badge_region(pixels: torch.Tensor) -> torch.Tensor:
    start = IMAGE_SIZE - BADGE_SIZE - BADGE_MARGIN
    return pixels[:, start : start + BADGE_SIZE, start : start + BADGE_SIZE]


def test_scenes_are_a_function_of_their_seed():
    assert sample_scene(17) == sample_scene(17)
    assert torch.equal(scene_pixels(sample_scene(17)), scene_pixels(sample_scene(17)))
    assert sample_scene(17) != sample_scene(18)
    assert render(sample_scene(5)).size == (IMAGE_SIZE, IMAGE_SIZE)


def test_every_seed_gives_one_to_three_separate_objects():
    for seed in range(3000):
        boxes = [o.box for o in sample_scene(seed).objects]
        assert 1 <= len(boxes) <= 3
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_badge_is_a_low_frequency_magenta_disc_drawn_only_when_present():
    with_badge = badge_region(scene_pixels(sample_scene(3, badge=True)))
    without = badge_region(scene_pixels(sample_scene(3, badge=False)))
    assert not torch.equal(with_badge, without)
    magenta = torch.tensor(BADGE_COLOR, dtype=torch.float32).view(3, 1) / 255
    ring = with_badge[:, 2, :].reshape(3, -1)  # a row through the disc, off its white centre
    assert (ring - magenta).abs().amax(dim=0).lt(1e-6).sum() >= 6
    assert torch.equal(with_badge[:, BADGE_SIZE // 2, BADGE_SIZE // 2], torch.ones(3))  # the white centre
    # low frequency: neighbouring pixels inside the disc are equal (v1's checkerboard alternated every 2 pixels)
    inner = with_badge[:, 2:4, 3:9]
    assert torch.equal(inner, inner[:, :1, :1].expand_as(inner))


def test_pairs_are_drawn_with_the_mild_popular_weight():
    counts = dict.fromkeys(all_pairs(), 0)
    for seed in range(6000):
        for obj in sample_scene(seed, max_objects=1).objects:
            counts[(obj.color, obj.shape)] += 1
    popular = sum(counts[p] for p in POPULAR) / len(POPULAR)
    others = sum(v for p, v in counts.items() if p not in POPULAR) / (len(counts) - len(POPULAR))
    assert 1.3 < popular / others < 1.7  # POPULAR_WEIGHT 1.5
    uniform = dict.fromkeys(all_pairs(), 0)
    for seed in range(6000):
        for obj in sample_scene(seed, max_objects=1, popular_weight=1.0).objects:
            uniform[(obj.color, obj.shape)] += 1
    assert max(uniform.values()) / min(uniform.values()) < 1.35


def test_negatives_of_each_kind():
    rng = random.Random(0)
    for seed in range(200):
        scene = sample_scene(seed)
        for kind in ("random", "popular", "adversarial"):
            pair = negative_pair(scene, kind, rng)
            if pair is None:
                continue
            assert pair not in scene.pairs
            if kind == "popular":
                assert pair in POPULAR
            if kind == "adversarial":
                assert any(pair[0] == o.color or pair[1] == o.shape for o in scene.objects)
