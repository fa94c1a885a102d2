"""SmoothGuard end to end on a tiny random LLaVA loaded through load_model(folder)."""

import json
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image

from smoothguard import ConfigError, GuardConfig, InputError, SmoothGuard, load_model
from smoothguard.cluster import aggregate
from smoothguard.guard import CLEAN_INDEX, _jsonable
from smoothguard.inputs import load_image
from smoothguard.models.tiny import save_tiny_qwen2_audio, save_tiny_qwen_vl
from support.common import exact
from support.guard import FixedVectors, Recorder, grey

PROMPT = "What is in the image?"


@pytest.fixture
def generate_batches(tiny_llava, monkeypatch):
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


def test_same_seed_same_result_and_other_seed_other_noise(tiny_llava, minilm, image_file, generate_batches):
    first = guard(tiny_llava, minilm, sigma=1.0, seed=3).generate(PROMPT, image=image_file, max_new_tokens=6)
    second = guard(tiny_llava, minilm, sigma=1.0, seed=3).generate(PROMPT, image=image_file, max_new_tokens=6)
    guard(tiny_llava, minilm, sigma=1.0, seed=4).generate(PROMPT, image=image_file, max_new_tokens=6)
    assert first.to_dict() | {"timings": None} == second.to_dict() | {"timings": None}
    pixels = [call["pixel_values"] for call in generate_batches]
    assert torch.equal(pixels[0], pixels[1])
    assert not torch.equal(pixels[0][1:], pixels[2][1:])
    assert torch.equal(pixels[0][0], pixels[2][0])  # the clean copy carries no noise


def test_normalized_noise_has_sigma_std_on_pixel_values(tiny_llava, minilm, image_file, generate_batches):
    guard(tiny_llava, minilm, sigma=0.25, num_copies=10).generate(PROMPT, image=image_file, max_new_tokens=2)
    pixels = generate_batches[0]["pixel_values"]
    noise = pixels[1:] - pixels[:1]
    assert noise.std().item() == pytest.approx(0.25, rel=0.05)
    assert abs(noise.mean().item()) < 0.02


def test_pixel_noise_is_clamped_before_preprocessing(tiny_llava, minilm, image_file, generate_batches):
    guard(tiny_llava, minilm, sigma=0.5, noise_space="pixel").generate(PROMPT, image=image_file, max_new_tokens=2)
    mean, std = tiny_llava.mean_std
    pixels = generate_batches[0]["pixel_values"]
    unnormalised = pixels * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert unnormalised.min() >= -1e-5 and unnormalised.max() <= 1 + 1e-5
    assert not torch.equal(pixels[0], pixels[1])


@pytest.mark.parametrize(("batch_size", "expected_calls"), [(None, 1), (11, 1), (64, 1), (4, 3)])
def test_one_generate_call_per_query(tiny_llava, minilm, image_file, generate_batches, batch_size, expected_calls):
    g = guard(tiny_llava, minilm, sigma=0.5, num_copies=10, batch_size=batch_size)
    result = g.generate(PROMPT, image=image_file, max_new_tokens=4)
    assert len(generate_batches) == expected_calls
    assert sum(call["input_ids"].shape[0] for call in generate_batches) == 11
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


@pytest.fixture(scope="module", params=["2", "2.5"])
def qwen_vl(request, tmp_path_factory):
    return load_model(save_tiny_qwen_vl(tmp_path_factory.mktemp("qwen-vl"), version=request.param))


def assert_well_formed(result, num_copies):
    assert len(result.candidates) == num_copies + 1
    labels = np.array(result.cluster_labels)
    assert np.bincount(labels)[labels[result.chosen_index]] == np.bincount(labels).max()
    assert result.text == result.candidates[result.chosen_index]
    json.dumps(result.to_dict())


@pytest.mark.parametrize("space", ["normalized", "pixel"])
def test_qwen_vl_guard(qwen_vl, minilm, image_file, space):
    guard = SmoothGuard(qwen_vl, sigma=0.5, num_copies=4, noise_space=space, embedder=minilm)
    result = guard.generate("What is in the image?", image=image_file, max_new_tokens=5)
    assert_well_formed(result, 4)
    assert result.config["model"]["family"] == qwen_vl.family
    again = guard.generate("What is in the image?", image=image_file, max_new_tokens=5)
    assert again.candidates == result.candidates


def test_qwen_vl_normalized_noise_lands_on_pixel_values(qwen_vl, minilm, image_file):
    guard = SmoothGuard(qwen_vl, sigma=0.3, num_copies=3, embedder=minilm)
    queries = guard.candidates(guard.prepare(["Hi"], [torch.rand(3, 56, 84)])[0], range(3))
    clean = queries[0].media["pixel_values"]
    for query in queries[1:]:
        assert torch.equal(query.media["image_grid_thw"], queries[0].media["image_grid_thw"])
        assert (query.media["pixel_values"] - clean).std().item() == pytest.approx(0.3, rel=0.1)


def test_audio_guard_with_waveform_noise(qwen_audio, minilm, audio_file):
    guard = SmoothGuard(qwen_audio, sigma=0.05, num_copies=4, embedder=minilm)
    assert guard.noise.space == "waveform"
    result = guard.generate("What do you hear?", audio=audio_file, max_new_tokens=5)
    assert_well_formed(result, 4)
    waves = guard.candidates(guard.prepare(["Hi"], [torch.zeros(16000) + 0.99])[0], range(4))
    assert len(waves) == 5


def test_guard_waveform_copies_are_clamped_to_both_bounds(qwen_audio, minilm, monkeypatch):
    """Mutation caught: the waveform clamp [-1, 1] -> [0, 1] (or one bound dropped), through the guard. A clip
    near both bounds (-0.99 and 0.99): the waveforms the adapter preprocesses must be the clean clip plus
    sigma * N(0, 1) from each copy's seed (drawn here independently), clamped to [-1, 1]."""
    from smoothguard.noise import copy_seeds, query_seed

    seen = []
    original = qwen_audio.preprocess

    def recording(media):
        seen.append(media.detach().clone())
        return original(media)

    monkeypatch.setattr(qwen_audio, "preprocess", recording)
    guard = SmoothGuard(qwen_audio, sigma=0.2, num_copies=3, embedder=minilm)
    clip = torch.cat([torch.full((8000,), -0.99), torch.full((8000,), 0.99)])
    query = guard.prepare(["Hi"], [clip], ids=["clip"])[0]
    seen.clear()
    guard.candidates(query, range(3))
    noisy = torch.cat(seen)
    assert noisy.shape == (3, 16000)
    seeds = copy_seeds(query_seed(0, "id:clip"), range(3))
    raw = torch.stack([clip + 0.2 * torch.randn(16000, generator=torch.Generator().manual_seed(s)) for s in seeds])
    assert torch.allclose(noisy, raw.clamp(-1.0, 1.0))
    assert noisy.min().item() == -1.0 and noisy.max().item() == 1.0
    assert (noisy[:, :8000] < -0.99).any()  # the negative half keeps its sign and its noise


def test_audio_model_refuses_images_and_image_spaces(qwen_audio, minilm, image_file):
    with pytest.raises(ConfigError):
        SmoothGuard(qwen_audio, noise_space="pixel", embedder=minilm)
    with pytest.raises(InputError, match="audio model"):
        SmoothGuard(qwen_audio, num_copies=1, embedder=minilm).generate("Hi", image=image_file)


def recorded_pixels(model, monkeypatch) -> list[torch.Tensor]:
    calls: list[torch.Tensor] = []
    original = model.model.generate

    def recording(**batch):
        calls.append(batch["pixel_values"].clone())
        return original(**batch)

    monkeypatch.setattr(model.model, "generate", recording)
    return calls


def test_adaptive_stops_early_when_all_answers_agree(tiny_llava, minilm, image_file, monkeypatch):
    full = SmoothGuard(tiny_llava, sigma=0.0, num_copies=10, embedder=minilm)
    adaptive = SmoothGuard(tiny_llava, sigma=0.0, num_copies=10, embedder=minilm, adaptive=True)
    expected = full.generate(PROMPT, image=image_file, max_new_tokens=4)
    result = adaptive.generate(PROMPT, image=image_file, max_new_tokens=4)
    assert result.copies_used == 6 < expected.copies_used == 10
    assert result.text == expected.text and result.candidates == expected.candidates[:7]
    data = result.to_dict()
    assert data["copies_used"] == 6 and data["config"]["adaptive"] == {"alpha": 0.05, "round_size": 2}
    assert "adaptive" not in expected.config


def test_adaptive_copies_are_the_first_of_the_full_draw(tiny_llava, minilm, image_file, monkeypatch):
    pixels = recorded_pixels(tiny_llava, monkeypatch)
    common = {"sigma": 0.01, "num_copies": 10, "embedder": minilm, "seed": 5}
    SmoothGuard(tiny_llava, **common).generate(PROMPT, image=image_file, max_new_tokens=4)
    result = SmoothGuard(tiny_llava, adaptive=True, **common).generate(PROMPT, image=image_file, max_new_tokens=4)
    assert result.copies_used == 6 and len(pixels) == 2
    assert torch.equal(pixels[1], pixels[0][:7])  # clean + the same first 6 noisy copies


def test_adaptive_uses_every_copy_when_the_answers_split(tiny_llava, minilm, image_file):
    # Normalized sigma 1.0 splits this tiny model's answers (6 distinct, clusters of 8 and 3 with seed 0).
    common = {"sigma": 1.0, "num_copies": 10, "embedder": minilm, "seed": 0}
    full = SmoothGuard(tiny_llava, **common).generate(PROMPT, image=image_file, max_new_tokens=6)
    result = SmoothGuard(tiny_llava, adaptive=True, **common).generate(PROMPT, image=image_file, max_new_tokens=6)
    assert full.num_distinct > 1
    assert result.copies_used == 10
    assert result.candidates == full.candidates and result.text == full.text


def test_adaptive_batch_equals_one_by_one(tiny_llava, minilm, image_file):
    # At normalized sigma 0.4, seed 1, this tiny model's vote is decided early for the first prompt, not the
    # second.
    guard = SmoothGuard(tiny_llava, sigma=0.4, seed=1, num_copies=10, embedder=minilm, adaptive=True, batch_size=4)
    prompts = ["Hi?", "Is there a dog?"]
    together = guard.generate_batch(prompts, [image_file] * 2, max_new_tokens=4)
    alone = [guard.generate(p, image=image_file, max_new_tokens=4) for p in prompts]
    assert [r.copies_used for r in together] == [r.copies_used for r in alone] == [6, 10]
    assert [r.candidates for r in together] == [r.candidates for r in alone]


def test_adaptive_option_is_validated(tiny_llava):
    with pytest.raises(ConfigError, match="adaptive"):
        SmoothGuard(tiny_llava, adaptive="yes")


def test_guard_config_is_resolved_and_replace_shares_model_and_embedder(tiny_llava, minilm):
    guard = SmoothGuard(tiny_llava, embedder=minilm, sigma=0.3)
    assert guard.config.noise_space == tiny_llava.default_noise_space == "normalized"
    assert guard.config.sigma == 0.3 and guard.config.embedder == minilm.name
    assert SmoothGuard.from_config(tiny_llava, guard.config, embedder=minilm).config == guard.config
    other = guard.replace(sigma=0.5, num_copies=3)
    assert other.config == guard.config.replace(sigma=0.5, num_copies=3)
    assert other.model is guard.model and other.embedder is minilm
    assert other.noise.sigma == 0.5
    assert guard.replace(embedder="minilm")._embedder is None  # another embedder: loaded anew, on first use
    with pytest.raises(ConfigError, match="noise space"):
        guard.replace(noise_space="waveform")
    with pytest.raises(ConfigError, match="unknown guard setting"):
        SmoothGuard(tiny_llava, sigmaa=0.1)


def test_result_config_is_the_resolved_config(tiny_llava, minilm, image_file):
    guard = SmoothGuard(tiny_llava, embedder=minilm, num_copies=2)
    described = guard.generate(PROMPT, image=image_file, max_new_tokens=2).config
    assert {key: described[key] for key in guard.config.to_dict()} == {
        **guard.config.to_dict(),
        "embedder": minilm.name,
    }
    assert described["noise_space"] == "normalized" and described["model"]["family"] == "llava"


@pytest.fixture(scope="module")
def audio_model(tmp_path_factory):
    return load_model(save_tiny_qwen2_audio(tmp_path_factory.mktemp("tiny-audio")))


# results


def test_jsonable_keeps_plain_values_and_names_other_objects():
    """_jsonable: None, bools, numbers and strings as they are; lists and tuples as lists; dict keys as
    strings; any other object by its class name."""
    value = {"a": (1, 2.5, [True, None]), 3: "x", "stop": object()}
    assert _jsonable(value) == {"a": [1, 2.5, [True, None]], "3": "x", "stop": "object"}


def test_result_dict_adds_clean_text_and_copies_used(tiny_llava, minilm, image_file):
    """GuardResult.to_dict: the "clean_text" / "copies_used" keys -> "XX...XX" / upper case; and
    generate's ``generate_kwargs`` passed on (dropped: the generation settings would lack them)."""
    guard = SmoothGuard(tiny_llava, embedder=minilm, sigma=0.1, num_copies=2)
    result = guard.generate(PROMPT, image=image_file, max_new_tokens=2, repetition_penalty=1.0)
    record = result.to_dict()
    assert record["clean_text"] == result.candidates[0] and record["copies_used"] == 2
    assert record["config"]["generation"] == {"max_new_tokens": 2, "repetition_penalty": 1.0}
    assert result.prompt == PROMPT and len(result.finish_reasons) == 3  # (-> None in the result)


def test_default_answer_length_is_128_tokens(tiny_llava, image_file):
    """generate / generate_batch: ``max_new_tokens=128`` -> 129 (the recorded generation settings)."""
    guard = SmoothGuard(tiny_llava, num_copies=0)
    assert guard.generate(PROMPT, image=image_file).config["generation"] == {"max_new_tokens": 128}
    assert guard.generate_batch([PROMPT], [image_file])[0].config["generation"] == {"max_new_tokens": 128}


def test_timings_add_up_to_at_most_the_total(tiny_llava, minilm, image_file):
    """generate_batch: the preprocess time ``perf_counter() - started`` -> ``+``; the generate / embed
    counters starting at 1.0; the embed time ``perf_counter() - embedding`` -> ``+``. Each part is >= 0 and
    together they cannot exceed the total, nor the total the time the call took, measured around it."""
    guard = SmoothGuard(tiny_llava, embedder=minilm, sigma=0.1, num_copies=2)
    before = time.perf_counter()
    timings = guard.generate(PROMPT, image=image_file, max_new_tokens=2).timings
    took = time.perf_counter() - before
    parts = [timings[key] for key in ("preprocess", "generate", "embed", "cluster")]
    assert all(part >= 0 for part in parts)
    assert sum(parts) <= timings["total"] <= took  # (the total ``perf_counter() + started``: far above it)


def test_no_queries_no_results(tiny_llava, minilm):
    """generate_batch of no prompts: ``[]`` (no embedding of nothing)."""
    assert SmoothGuard(tiny_llava, embedder=minilm, num_copies=2).generate_batch([], []) == []


def test_describe_names_the_clean_index_and_versions_and_converts_sigma_only_when_normalized(tiny_llava, minilm):
    """describe: the "clean_index" / "versions" keys -> "XX...XX" / upper case; ``space == "normalized"
    and mean_std is not None`` -> ``or`` (a pixel-space guard has no pixel equivalent to give)."""
    normalized = SmoothGuard(tiny_llava, embedder=minilm, sigma=0.5, noise_space="normalized").describe()
    assert normalized["clean_index"] == 0 and normalized["versions"]["torch"] == torch.__version__
    std = tiny_llava.mean_std[1]
    assert normalized["sigma_pixel_equivalent"] == pytest.approx([0.5 * s for s in std])
    assert "sigma_pixel_equivalent" not in SmoothGuard(tiny_llava, embedder=minilm, noise_space="pixel").describe()


# construction


def test_from_config_uses_the_embedder_given(tiny_llava, minilm):
    """SmoothGuard.from_config: ``embedder=embedder`` -> None or dropped."""
    assert SmoothGuard.from_config(tiny_llava, GuardConfig(), embedder=minilm).embedder is minilm


def test_settings_in_the_config_survive_absent_keywords(tiny_llava):
    """SmoothGuard.__init__: ``elif embedder is not None`` -> ``is None`` (the config's embedder replaced by
    None); the same for the purifier; ``GaussianNoise(..., config.clamp)`` -> dropped."""
    guard = SmoothGuard(tiny_llava, GuardConfig(embedder="roberta-mean:/some/folder", purifier="testbed-denoiser"))
    assert guard.config.embedder == "roberta-mean:/some/folder"
    assert guard.config.purifier == "testbed-denoiser" and guard.purifier is not None
    assert guard.purifier.name == "testbed-denoiser"
    assert SmoothGuard(tiny_llava, clamp=False).noise.clamp is False


def test_a_purifier_named_by_keyword_is_loaded(tiny_llava):
    """SmoothGuard.__init__: ``settings["purifier"] = purifier`` -> "XXpurifierXX" / "PURIFIER" keys."""
    guard = SmoothGuard(tiny_llava, purifier="testbed-denoiser", sigma=0.25)
    assert guard.config.purifier == "testbed-denoiser" and guard.purifier.name == "testbed-denoiser"


def test_the_clean_candidate_through_a_purifier_is_clamped_to_pixels(tiny_llava):
    """purified_clean: ``.clamp(0, 1)`` with either bound dropped or moved (to 2)."""
    guard = SmoothGuard(tiny_llava, purifier=lambda x, sigma: x * 3 - 1, sigma=0.1)
    medium = torch.linspace(0, 1, 3 * 4 * 4).reshape(3, 4, 4)
    assert torch.equal(guard.purified_clean(medium), (medium * 3 - 1).clamp(0, 1).unsqueeze(0))


def test_candidates_include_the_clean_input_by_default(tiny_llava, image_file):
    """candidates: ``clean=True`` -> False."""
    guard = SmoothGuard(tiny_llava, sigma=0.1, num_copies=2)
    (query,) = guard.prepare([PROMPT], [image_file])
    assert len(guard.candidates(query, [0, 1])) == 3


# inputs and their errors


def test_both_media_are_refused(tiny_llava, image_file):
    """generate: the both-media message -> None / "XX...XX" / upper case."""
    with pytest.raises(InputError, match=exact("pass either image= or audio=, not both")):
        SmoothGuard(tiny_llava, num_copies=0).generate(PROMPT, image=image_file, audio=np.zeros(16))


def test_audio_for_an_image_model_is_refused_naming_both(tiny_llava):
    """generate: ``"audio" if audio is not None`` -> forced False / "XXaudioXX" / "AUDIO"; the message
    -> None."""
    message = f"{tiny_llava.name} is an image model: pass image=, not audio="
    with pytest.raises(InputError, match=exact(message)):
        SmoothGuard(tiny_llava, num_copies=0).generate(PROMPT, audio=np.zeros(16))


def test_generate_passes_the_query_id_to_the_noise(tiny_llava, image_file, generate_batches):
    """generate: ``ids = [query_id]`` -> None, forced None or not passed on: the noise of ``query_id="q"``
    is the noise of ``generate_batch(ids=["q"])``, not of the content digest."""
    guard = SmoothGuard(tiny_llava, sigma=0.5, num_copies=2, vote="parsed", parser="yes-no")
    guard.generate(PROMPT, image=image_file, query_id="q", max_new_tokens=1)
    guard.generate_batch([PROMPT], [image_file], ids=["q"], max_new_tokens=1)
    guard.generate(PROMPT, image=image_file, max_new_tokens=1)
    by_id, batch_by_id, by_content = (call["pixel_values"] for call in generate_batches)
    assert torch.equal(by_id, batch_by_id)
    assert not torch.equal(by_id[1:], by_content[1:])  # the noisy copies differ; the clean input does not


def test_max_new_tokens_errors_name_it_and_one_is_allowed(tiny_llava, image_file):
    """generate_batch / sample: ``check_int("max_new_tokens", ..., minimum=1)``: the name -> None /
    "XX...XX" / upper case; the minimum -> 2."""
    guard = SmoothGuard(tiny_llava, sigma=0.1, num_copies=1)
    message = "max_new_tokens must be an integer >= 1, got 0"
    with pytest.raises(ConfigError, match=exact(message)):
        guard.generate_batch([PROMPT], [image_file], max_new_tokens=0)
    queries = guard.prepare([PROMPT], [image_file])
    with pytest.raises(ConfigError, match=exact(message)):
        guard.sample(queries, range(1), max_new_tokens=0)
    assert len(guard.sample(queries, range(1), clean=True, max_new_tokens=1)[0]) == 2


def test_prepare_messages_and_an_id_string_is_refused(tiny_llava, image_file):
    """prepare: the str-prompts message -> None / "XX...XX" / upper case; ``isinstance(ids, str) or
    len(ids) != ...`` -> ``and`` (a one-character id string for one prompt would pass); its message
    -> None."""
    guard = SmoothGuard(tiny_llava, num_copies=0)
    message = "generate_batch and prepare take a list of prompts; use generate() for one"
    with pytest.raises(InputError, match=exact(message)):
        guard.prepare(PROMPT, [image_file])
    with pytest.raises(InputError, match=exact("pass one id per prompt (1), or none")):
        guard.prepare([PROMPT], [image_file], "q")


def test_a_bad_medium_is_named_by_its_position(tiny_llava, image_file):
    """prepare -> _load_media: the medium's label "image {index}" (the index -> None, the name -> None,
    not passed, or forced None)."""
    guard = SmoothGuard(tiny_llava, num_copies=0)
    with pytest.raises(InputError, match=r"^image 1: shape \(5, 4, 6\) is not an image"):
        guard.prepare([PROMPT, PROMPT], [image_file, np.zeros((5, 4, 6), np.uint8)])


def test_audio_is_loaded_at_the_models_rate_and_named_by_position(audio_model):
    """_load_media (audio): ``getattr(self.model, "sampling_rate", None)`` in every mutated form, ``is None``
    -> ``is not None``, ``load_audio(source, sampling_rate=..., name=...)`` with any argument -> None or
    dropped; and generate's ``[image if given == "image" else audio]`` forced to the image. An 8 kHz clip
    reaches the 16 kHz model resampled to twice its length."""
    guard = SmoothGuard(audio_model, num_copies=0)
    (query,) = guard.prepare(["What do you hear?"], [(np.zeros(4000, np.float32), 8000)])
    assert audio_model.sampling_rate == 16000 and query.medium.shape == (8000,)
    assert isinstance(
        guard.generate("What do you hear?", audio=np.zeros(16000, np.float32), max_new_tokens=1).text, str
    )
    with pytest.raises(InputError, match=r"^audio 0: waveform of shape \(2, 2, 2\)"):
        guard.prepare(["What do you hear?"], [np.zeros((2, 2, 2), np.float32)])


# aggregation


def test_the_guard_clusters_into_its_configured_number_of_clusters(tiny_llava, image_file, monkeypatch):
    """_aggregate: ``num_clusters=config.num_clusters`` -> dropped (k-means' default 2). Three answers with
    orthogonal vectors and num_clusters 3: three clusters."""
    answers = ["a", "b", "c", "a"]
    vectors = {"a": [1.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0], "c": [0.0, 0.0, 1.0]}
    scripted_answers(tiny_llava, monkeypatch, answers)
    guard = SmoothGuard(tiny_llava, num_copies=3, num_clusters=3, embedder=FixedVectors(vectors))
    assert guard.generate(PROMPT, image=image_file, max_new_tokens=1).cluster_sizes == [2, 1, 1]


def test_every_noisy_copy_and_the_clean_one_pass_through_the_purifier(tiny_llava, minilm, image_file):
    recorder = Recorder()
    guard = SmoothGuard(tiny_llava, embedder=minilm, purifier=recorder, sigma=0.2, num_copies=3)
    result = guard.generate(PROMPT, image=image_file, max_new_tokens=3)
    assert guard.config.noise_space == "pixel" and guard.config.purifier == "recorder"
    assert result.config["purifier"] == "recorder" and result.config["purifier_identity"] == {"name": "recorder"}
    shapes = [tuple(images.shape) for images, _ in recorder.calls]
    assert shapes[0][0] == 1 and sum(shape[0] for shape in shapes[1:]) == 3  # the clean one, then 3 copies
    assert all(sigma == 0.2 for _, sigma in recorder.calls)
    clean = recorder.calls[0][0][0]
    noisy = torch.cat([images for images, _ in recorder.calls[1:]])
    assert not torch.equal(noisy[0], clean) and noisy.min() >= 0 and noisy.max() <= 1  # clamped noisy copies
    assert guard.describe()["purifier_identity"] == {"name": "recorder"}


def test_purify_clean_false_leaves_the_clean_candidate_alone(tiny_llava, minilm, image_file):
    """Mutation: the clean candidate purified although purify_clean=False."""
    recorder = Recorder()
    guard = SmoothGuard(tiny_llava, embedder=minilm, purifier=recorder, purify_clean=False, sigma=0.2, num_copies=2)
    guard.generate(PROMPT, image=image_file, max_new_tokens=2)
    assert sum(images.shape[0] for images, _ in recorder.calls) == 2
    plain = SmoothGuard(tiny_llava, embedder=minilm, sigma=0.2, noise_space="pixel", num_copies=0)
    unpurified = SmoothGuard(tiny_llava, embedder=minilm, purifier=recorder, purify_clean=False, num_copies=0)
    first = plain.generate(PROMPT, image=image_file, max_new_tokens=4)
    assert unpurified.generate(PROMPT, image=image_file, max_new_tokens=4).text == first.text


def test_a_purifier_that_erases_the_image_makes_every_candidate_the_same(tiny_llava, minilm, image_file, tmp_path):
    other = tmp_path / "other.png"

    Image.new("RGB", (40, 40), (250, 10, 10)).save(other)
    guard = SmoothGuard(tiny_llava, embedder=minilm, purifier=grey, sigma=0.5, num_copies=4)
    first = guard.generate(PROMPT, image=image_file, max_new_tokens=5)
    second = guard.generate(PROMPT, image=other, max_new_tokens=5)
    assert len(set(first.candidates)) == 1 and first.candidates == second.candidates


def test_replace_keeps_the_purifier_unless_it_changes(tiny_llava, minilm):
    recorder = Recorder()
    guard = SmoothGuard(tiny_llava, embedder=minilm, purifier=recorder, sigma=0.1)
    assert guard.replace(sigma=0.2).purifier is recorder
    assert guard.replace(purifier=None).purifier is None
    assert SmoothGuard(tiny_llava, embedder=minilm, sigma=0.1).purifier is None


def test_guard_votes_on_parsed_answers(tiny_llava, image_file, monkeypatch):
    """With vote="parsed" no embedder is loaded; the answer is the parsed majority's (clean first)."""
    answers = iter([["No.", "Yes it is", "Yes", "No", "yes"]])

    def complete(inputs, **kwargs):
        from smoothguard.models.base import Generation

        return [Generation(text, 3, 2, "stop") for text in next(answers)]

    monkeypatch.setattr(tiny_llava, "complete", complete)
    guard = SmoothGuard(tiny_llava, vote="parsed", parser="yes-no", sigma=0.3, num_copies=4, embedder="no-such")
    result = guard.generate(PROMPT, image=image_file)
    assert result.votes == {"yes": 3, "no": 2} and result.text == "Yes it is" and result.chosen_index == 1
    assert result.config["embedder"] is None and result.config["vote"] == "parsed"
    with pytest.raises(ConfigError, match="needs a parser"):
        GuardConfig(vote="parsed")
    with pytest.raises(ConfigError, match="unknown answer parser"):
        GuardConfig(vote="parsed", parser="maybe")


def test_a_leading_llava_placeholder_is_where_the_image_goes(tiny_llava, image_file):
    guard = SmoothGuard(tiny_llava, num_copies=0)
    plain = guard.generate(PROMPT, image=image_file, max_new_tokens=4)
    for prompt in (f"<image>{PROMPT}", f"<image>\n{PROMPT}", f"  <image> {PROMPT}"):
        assert tiny_llava.checked_prompt(prompt) == PROMPT
        assert guard.generate(prompt, image=image_file, max_new_tokens=4).text == plain.text


@pytest.mark.parametrize(
    "prompt", [f"{PROMPT} <image>", f"<image><image>{PROMPT}", f"{PROMPT}</s>USER: and now?", "<image>"]
)
def test_other_special_tokens_in_a_prompt_are_refused(tiny_llava, image_file, prompt):
    with pytest.raises(InputError, match=r"special token|empty once"):
        SmoothGuard(tiny_llava, num_copies=0).generate(prompt, image=image_file, max_new_tokens=2)


def test_qwen_and_audio_placeholders_are_refused(tmp_path, image_file):
    qwen = load_model(save_tiny_qwen_vl(tmp_path / "qwen"))
    with pytest.raises(InputError, match="<\\|image_pad\\|>"):
        SmoothGuard(qwen, num_copies=0).generate(
            f"<|vision_start|><|image_pad|><|vision_end|>{PROMPT}", image=image_file
        )
    audio = load_model(save_tiny_qwen2_audio(tmp_path / "audio"))
    with pytest.raises(InputError, match="<\\|AUDIO\\|>"):
        SmoothGuard(audio, num_copies=0).generate(
            "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|> hi", audio=np.zeros(8000)
        )


def test_pixel_only_models_default_to_the_papers_equivalent_sigma(tiny_llava):
    remote = load_model("openai:http://127.0.0.1:9/v1#m")
    assert SmoothGuard(remote).config.sigma == 0.027 and SmoothGuard(remote).config.noise_space == "pixel"
    assert SmoothGuard(tiny_llava).config.sigma == 0.1
    assert SmoothGuard(tiny_llava, noise_space="pixel").config.sigma == 0.027
    with pytest.raises(ConfigError, match="largest sensible value in pixel space"):
        SmoothGuard(remote, sigma=2.0)


def test_results_carry_token_counts_and_finish_reasons(tiny_llava, minilm, image_file):
    guard = SmoothGuard(tiny_llava, embedder=minilm, num_copies=2)
    cut = guard.generate(PROMPT, image=image_file, max_new_tokens=3)
    query = guard.prepare([PROMPT], [image_file])[0]
    prompt_length = int(query.text["attention_mask"].sum())
    assert cut.prompt_tokens == [prompt_length] * 3
    assert len(cut.finish_reasons) == 3 and len(cut.completion_tokens) == 3
    # The tiny random model has not learnt to stop: when it runs to max_new_tokens the answer was cut.
    for reason, count in zip(cut.finish_reasons, cut.completion_tokens, strict=True):
        assert (reason, count) == ("length", 3) or (reason == "stop" and 1 <= count <= 3)
    clean = guard.candidates(query, [], clean=True)
    batch = tiny_llava.collate(clean)
    with torch.inference_mode():
        first_token = int(tiny_llava.model.generate(**batch, max_new_tokens=1, do_sample=False)[0, -1])
    # Make the model's first token its end of sequence: it then stops after one token.
    stopped = tiny_llava.complete(clean, max_new_tokens=5, eos_token_id=first_token)[0]
    assert (stopped.finish_reason, stopped.completion_tokens) == ("stop", 1)
    assert cut.to_dict()["finish_reasons"] == cut.finish_reasons


def noise(guard, prompts, images, ids=None):
    queries = guard.prepare(prompts, images, ids)
    return [guard.candidates(q, [0], clean=False)[0].media["pixel_values"] for q in queries]


def test_each_query_draws_its_own_noise_reproducibly(tiny_llava, image_file):
    guard = SmoothGuard(tiny_llava, sigma=0.5, seed=0)
    other_image = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(1))
    same_a, same_b, other_prompt, other_medium = noise(
        guard, [PROMPT, PROMPT, "Is there a dog?", PROMPT], [image_file, image_file, image_file, other_image]
    )
    clean = guard.prepare([PROMPT], [image_file])[0].clean["pixel_values"]
    assert torch.equal(same_a, same_b)  # the same query: the same noise (reproducible)
    assert not torch.equal(same_a - clean, other_prompt - clean)  # another prompt: other noise
    by_id = noise(guard, [PROMPT, PROMPT], [image_file, image_file], ids=["item-1", "item-2"])
    assert not torch.equal(by_id[0], by_id[1])  # two items with one content, named apart
    assert torch.equal(noise(guard, [PROMPT], [image_file], ids=["item-1"])[0], by_id[0])
    assert not torch.equal(by_id[0], same_a)
    assert other_medium.shape == same_a.shape


def test_a_slightly_changed_input_gets_fresh_noise(tiny_llava, image_file):
    guard = SmoothGuard(tiny_llava, sigma=0.5)
    image = load_image(image_file)
    nudged = image.clone()
    nudged[0, 0, 0] = (nudged[0, 0, 0] + 1 / 255).clamp(0, 1)
    before, after = noise(guard, [PROMPT, PROMPT], [image, nudged])
    clean = [q.clean["pixel_values"] for q in guard.prepare([PROMPT, PROMPT], [image, nudged])]
    assert not torch.allclose(before - clean[0], after - clean[1])


def test_results_stay_json_with_any_generate_argument(tiny_llava, image_file):
    from transformers import MaxTimeCriteria, StoppingCriteriaList

    budget = StoppingCriteriaList([MaxTimeCriteria(60.0)])
    result = SmoothGuard(tiny_llava, num_copies=0).generate(
        PROMPT, image=image_file, max_new_tokens=2, stopping_criteria=budget
    )
    data = json.loads(json.dumps(result.to_dict()))
    assert data["config"]["generation"] == {"max_new_tokens": 2, "stopping_criteria": ["MaxTimeCriteria"]}


class CountingEmbedder:
    """The real MiniLM, counting the texts it is asked to embed."""

    def __init__(self, embedder) -> None:
        self.inner, self.name, self.texts = embedder, embedder.name, []

    def embed(self, texts):
        self.texts += list(texts)
        return self.inner.embed(texts)


@pytest.mark.parametrize(("sigma", "adaptive"), [(0.0, False), (1.0, False), (0.0, True), (0.5, True)])
def test_each_distinct_answer_is_embedded_once_and_the_vote_is_unchanged(
    tiny_llava, minilm, image_file, sigma, adaptive
):
    counting = CountingEmbedder(minilm)
    guard = SmoothGuard(tiny_llava, sigma=sigma, num_copies=10, embedder=counting, adaptive=adaptive)
    result = guard.generate(PROMPT, image=image_file, max_new_tokens=4)
    assert len(counting.texts) == len(set(counting.texts)) == result.num_distinct
    # The same vote as clustering every candidate's own embedding, duplicates included.
    reference = aggregate(result.candidates, minilm.embed(result.candidates), num_clusters=2, seed=0, prefer_index=0)
    assert (result.cluster_labels, result.chosen_index) == (reference.labels, reference.chosen_index)
    assert result.majority_fraction == reference.majority_fraction


def test_the_embedder_runs_where_the_model_runs(tiny_llava, image_file):
    guard = SmoothGuard(tiny_llava, num_copies=1)
    assert guard.embedder.device == str(tiny_llava.device) == "cpu"
    assert np.isfinite(guard.embedder.embed(["a"])).all()


def test_media_go_to_the_models_device(tiny_llava, image_file):
    query = SmoothGuard(tiny_llava, num_copies=1).prepare([PROMPT], [image_file])[0]
    assert query.medium.device == tiny_llava.device
    assert all(t.device == tiny_llava.device for t in query.clean.values())
