"""SmoothGuard end to end on a tiny random LLaVA loaded through load_model(folder)."""

import json
import math

import numpy as np
import pytest
import torch

from smoothguard import ConfigError, InputError, SmoothGuard
from smoothguard.guard import CLEAN_INDEX

PROMPT = "What is in the image?"


@pytest.fixture
def generate_calls(tiny_llava, monkeypatch):
    """Record the batch every model.generate call receives."""
    calls = []
    original = tiny_llava.model.generate

    def recording(**batch):
        calls.append({k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)})
        return original(**batch)

    monkeypatch.setattr(tiny_llava.model, "generate", recording)
    return calls


def guard(model, embedder, **kwargs):
    return SmoothGuard(model, embedder=embedder, **kwargs)


def test_candidates_include_clean_answer(tiny_llava, minilm, image_file):
    result = guard(tiny_llava, minilm, sigma=1.0, num_copies=6).generate(PROMPT, image=image_file, max_new_tokens=6)
    baseline = guard(tiny_llava, minilm, num_copies=0).generate(PROMPT, image=image_file, max_new_tokens=6)
    assert len(result.candidates) == 7
    assert len(result.cluster_labels) == 7
    assert result.clean_index == CLEAN_INDEX
    assert result.clean_text == baseline.text == baseline.candidates[0]
    assert baseline.majority_fraction == 1.0 and baseline.config["embedder"] is None


def test_chosen_answer_is_a_member_of_the_largest_cluster(tiny_llava, minilm, image_file):
    # sigma 1.0 in normalised units makes this random model's answers split (checked: >1 distinct).
    result = guard(tiny_llava, minilm, sigma=1.0, num_copies=10).generate(PROMPT, image=image_file, max_new_tokens=6)
    assert result.num_distinct > 1
    labels = np.array(result.cluster_labels)
    sizes = np.bincount(labels)
    majority = labels[result.chosen_index]
    assert sizes[majority] == sizes.max()
    assert result.majority_fraction == pytest.approx(sizes.max() / len(labels))
    assert result.text == result.candidates[result.chosen_index]
    assert sum(result.cluster_sizes) == 11


def test_same_seed_same_result_and_other_seed_other_noise(tiny_llava, minilm, image_file, generate_calls):
    first = guard(tiny_llava, minilm, sigma=1.0, seed=3).generate(PROMPT, image=image_file, max_new_tokens=6)
    second = guard(tiny_llava, minilm, sigma=1.0, seed=3).generate(PROMPT, image=image_file, max_new_tokens=6)
    guard(tiny_llava, minilm, sigma=1.0, seed=4).generate(PROMPT, image=image_file, max_new_tokens=6)
    assert first.to_dict() | {"timings": None} == second.to_dict() | {"timings": None}
    pixels = [call["pixel_values"] for call in generate_calls]
    assert torch.equal(pixels[0], pixels[1])
    assert not torch.equal(pixels[0][1:], pixels[2][1:])
    assert torch.equal(pixels[0][0], pixels[2][0])  # the clean copy carries no noise


def test_normalized_noise_has_sigma_std_on_pixel_values(tiny_llava, minilm, image_file, generate_calls):
    guard(tiny_llava, minilm, sigma=0.25, num_copies=10).generate(PROMPT, image=image_file, max_new_tokens=2)
    pixels = generate_calls[0]["pixel_values"]
    noise = pixels[1:] - pixels[:1]
    assert noise.std().item() == pytest.approx(0.25, rel=0.05)
    assert abs(noise.mean().item()) < 0.02


def test_pixel_noise_is_clamped_before_preprocessing(tiny_llava, minilm, image_file, generate_calls):
    guard(tiny_llava, minilm, sigma=0.5, noise_space="pixel").generate(PROMPT, image=image_file, max_new_tokens=2)
    mean, std = tiny_llava.mean_std
    pixels = generate_calls[0]["pixel_values"]
    unnormalised = pixels * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert unnormalised.min() >= -1e-5 and unnormalised.max() <= 1 + 1e-5
    assert not torch.equal(pixels[0], pixels[1])


@pytest.mark.parametrize(("batch_size", "expected_calls"), [(None, 1), (11, 1), (64, 1), (4, 3)])
def test_one_generate_call_per_query(tiny_llava, minilm, image_file, generate_calls, batch_size, expected_calls):
    g = guard(tiny_llava, minilm, sigma=0.5, num_copies=10, batch_size=batch_size)
    result = g.generate(PROMPT, image=image_file, max_new_tokens=4)
    assert len(generate_calls) == expected_calls
    assert sum(call["input_ids"].shape[0] for call in generate_calls) == 11
    assert len(result.candidates) == 11


def test_batched_queries_equal_one_by_one(tiny_llava, minilm, image_file):
    prompts = ["Hi?", "Describe the scene in detail, please, with every object and its colour.", PROMPT]
    g = guard(tiny_llava, minilm, sigma=1.0, num_copies=3)
    together = g.generate_batch(prompts, [image_file] * 3, max_new_tokens=8)
    alone = [g.generate(p, image=image_file, max_new_tokens=8) for p in prompts]
    assert [r.candidates for r in together] == [r.candidates for r in alone]
    assert [r.text for r in together] == [r.text for r in alone]


def test_result_is_json_ready_with_config_and_timings(tiny_llava, minilm, image_file):
    result = guard(tiny_llava, minilm, sigma=0.1, num_copies=2).generate(PROMPT, image=image_file, max_new_tokens=3)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["config"]["sigma"] == 0.1
    assert data["config"]["noise_space"] == "normalized"
    assert data["config"]["model"]["family"] == "llava"
    assert data["config"]["embedder"] == "all-MiniLM-L6-v2"
    assert data["config"]["generation"] == {"max_new_tokens": 3}
    assert data["config"]["sigma_pixel_equivalent"] == pytest.approx([0.1 * s for s in tiny_llava.mean_std[1]])
    assert set(data["timings"]) >= {"generate", "embed", "cluster", "total"}
    assert all(math.isfinite(v) and v >= 0 for v in data["timings"].values())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sigma": -0.1},
        {"sigma": float("nan")},
        {"sigma": "0.1"},
        {"num_copies": -1},
        {"num_copies": 2.5},
        {"noise_space": "waveform"},
        {"noise_space": "latent"},
        {"num_clusters": 0},
        {"batch_size": 0},
        {"seed": -1},
    ],
)
def test_bad_options_raise_config_error(tiny_llava, minilm, kwargs):
    with pytest.raises(ConfigError):
        guard(tiny_llava, minilm, **kwargs)


def test_bad_inputs_raise_input_error(tiny_llava, minilm, image_file, tmp_path):
    g = guard(tiny_llava, minilm, num_copies=1)
    with pytest.raises(InputError, match=r"missing\.png"):
        g.generate(PROMPT, image=tmp_path / "missing.png")
    with pytest.raises(InputError):
        g.generate("   ", image=image_file)
    with pytest.raises(InputError, match="one image"):
        g.generate(PROMPT)
    with pytest.raises(InputError):
        g.generate(PROMPT, image=image_file, audio=image_file)
    with pytest.raises(ConfigError):
        g.generate(PROMPT, image=image_file, max_new_tokens=0)


def test_pixel_copies_through_the_guard_are_clamped_to_both_bounds(tiny_llava, minilm, monkeypatch):
    """Mutation caught: the pixel clamp [0, 1] -> [-1, 1] (or a bound dropped), through the guard. An image
    near both bounds (0.01 and 0.99): the pixels the adapter preprocesses must be the image plus the copy's
    seeded noise (drawn here independently), clamped to [0, 1], reaching 0 and 1 exactly."""
    from smoothguard.noise import copy_seeds, query_seed

    seen = []
    original = tiny_llava.preprocess

    def recording(media):
        seen.append(media.detach().clone())
        return original(media)

    monkeypatch.setattr(tiny_llava, "preprocess", recording)
    g = guard(tiny_llava, minilm, sigma=0.2, num_copies=2, noise_space="pixel")
    image = torch.cat([torch.full((3, 16, 32), 0.01), torch.full((3, 16, 32), 0.99)], dim=1)
    query = g.prepare([PROMPT], [image], ids=["img"])[0]
    seen.clear()
    g.candidates(query, range(2))
    noisy = torch.cat(seen)
    seeds = copy_seeds(query_seed(0, "id:img"), range(2))
    draws = [torch.randn(image.shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    raw = torch.stack([image + 0.2 * draw for draw in draws])
    assert torch.allclose(noisy, raw.clamp(0.0, 1.0))
    assert noisy.min().item() == 0.0 and noisy.max().item() == 1.0


class FixedVectors:
    """An embedder that maps each answer to a fixed vector (answers not listed raise)."""

    name = "fixed-vectors"

    def __init__(self, vectors):
        self.vectors = vectors

    def embed(self, texts):
        return np.array([self.vectors[text] for text in texts], dtype=np.float32)


def scripted_answers(model, monkeypatch, answers):
    """Make ``model.complete`` answer ``answers`` in candidate order (clean first)."""
    from smoothguard.models.base import Generation

    def complete(inputs, **kwargs):
        assert len(inputs) == len(answers)
        return [Generation(text, 1, 1, "stop") for text in answers]

    monkeypatch.setattr(model, "complete", complete)


@pytest.mark.parametrize(
    "answers",
    [
        # copy 1 is in the other cluster: a guard passing prefer_index=1 (or the last index) picks "a dog".
        ["a cat", "a dog", "a cat.", "a dog"],
        ["a cat", "a cat.", "a dog", "a dog"],
    ],
)
def test_guard_level_tie_between_two_equal_clusters_is_won_by_the_clean_answer(
    tiny_llava, image_file, monkeypatch, answers
):
    """Mutation caught: the guard not preferring the clean candidate on a tie (``prefer_index=CLEAN_INDEX``
    pointing at another candidate, or the clean answer moved from index 0). The answers split 2 / 2 into two
    clusters of equal size, and inside the clean one "a cat" and "a cat." have the same vector (a similarity
    tie too): the clean answer must win both ties.

    (``prefer_index=None`` is equivalent at guard level: the clean candidate is the first, and the cluster's
    own tie rule, the first member first, then picks it too.)"""
    vectors = {"a cat": [1.0, 0.0], "a cat.": [1.0, 0.0], "a dog": [0.0, 1.0]}
    scripted_answers(tiny_llava, monkeypatch, answers)
    g = SmoothGuard(tiny_llava, num_copies=3, embedder=FixedVectors(vectors))
    result = g.generate(PROMPT, image=image_file, max_new_tokens=2)
    assert result.cluster_sizes == [2, 2]
    assert result.chosen_index == CLEAN_INDEX == 0 and result.text == "a cat" == result.clean_text
    assert result.majority_fraction == 0.5
    assert result.cluster_labels == [0 if a.startswith("a cat") else 1 for a in answers]
