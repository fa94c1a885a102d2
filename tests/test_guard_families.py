"""SmoothGuard through every model family: Qwen2-VL, Qwen2.5-VL (both noise spaces) and
Qwen2-Audio (waveform noise), on tiny random models loaded through load_model(folder)."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from smoothguard import ConfigError, InputError, SmoothGuard, load_model
from smoothguard.cli import main
from smoothguard.models.tiny import save_tiny_qwen2_audio, save_tiny_qwen_vl


@pytest.fixture(scope="module", params=["2", "2.5"])
def qwen_vl(request, tmp_path_factory):
    return load_model(save_tiny_qwen_vl(tmp_path_factory.mktemp("qwen-vl"), version=request.param))


@pytest.fixture(scope="module")
def qwen_audio(tmp_path_factory):
    return load_model(save_tiny_qwen2_audio(tmp_path_factory.mktemp("qwen-audio")))


@pytest.fixture(scope="module")
def audio_file(tmp_path_factory):
    rate = 8000  # not the model's 16 kHz: the guard resamples
    t = np.arange(int(1.5 * rate)) / rate
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    sf.write(path, (0.4 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate)
    return path


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


def test_cli_audio(capsys, qwen_audio, audio_file):
    code = main(
        [
            "generate",
            "--model",
            qwen_audio.name,
            "--audio",
            str(audio_file),
            "--prompt",
            "Hi",
            "--num-copies",
            "2",
            "--max-new-tokens",
            "3",
            "--json",
        ]
    )
    assert code == 0
    assert len(json.loads(capsys.readouterr().out)["candidates"]) == 3
