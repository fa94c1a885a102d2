"""Qwen2-Audio adapter on a tiny random model: differentiable features vs the processor, prompt
expansion, batched greedy generation, and input/config errors."""

import numpy as np
import pytest
import torch

from smoothguard.errors import ConfigError, InputError
from smoothguard.models.auto import load_model
from smoothguard.models.qwen_audio import QwenAudioAdapter
from smoothguard.models.tiny import save_tiny_qwen2_audio

SAMPLING_RATE = 16000


def make_clip(seconds: float, seed: int = 0, amplitude: float = 0.5) -> torch.Tensor:
    """A tone plus noise in [-1, 1], [round(seconds * 16000)] samples."""
    rng = np.random.default_rng(seed)
    num_samples = round(seconds * SAMPLING_RATE)
    t = np.arange(num_samples) / SAMPLING_RATE
    wave = 0.6 * np.sin(2 * np.pi * (220 + 110 * seed) * t) + 0.4 * rng.uniform(-1, 1, num_samples)
    return torch.from_numpy((amplitude * wave).astype(np.float32))


def rendered_prompt(adapter, prompt: str, waveform) -> str:
    """``prompt`` after the clip ``waveform`` in the processor's chat template (the clip itself, not a stand-in)."""
    content = [{"type": "audio", "audio": waveform}, {"type": "text", "text": prompt}]
    conversation = [{"role": "user", "content": content}]
    return adapter.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def processor_features(adapter: QwenAudioAdapter, clip: torch.Tensor) -> dict[str, torch.Tensor]:
    waveform = clip.numpy()
    return adapter.processor(
        text=rendered_prompt(adapter, "hi", waveform),
        audio=waveform,
        sampling_rate=SAMPLING_RATE,
        return_tensors="pt",
    )


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> QwenAudioAdapter:
    folder = save_tiny_qwen2_audio(tmp_path_factory.mktemp("tiny_qwen2_audio"))
    return load_model(folder, device="cpu")


def test_load_model_picks_the_audio_adapter(adapter: QwenAudioAdapter) -> None:
    assert isinstance(adapter, QwenAudioAdapter)
    assert adapter.sampling_rate == SAMPLING_RATE
    assert (adapter.family, adapter.modality, adapter.noise_spaces) == ("qwen2_audio", "audio", ("waveform",))


@pytest.mark.parametrize("seconds", [1.0, 3.7, 30.0])
def test_preprocess_matches_the_processor(adapter: QwenAudioAdapter, seconds: float) -> None:
    # Two copies at very different loudness: the max - 8 floor must be taken per row.
    clips = [make_clip(seconds, seed=1), make_clip(seconds, seed=2, amplitude=1e-3)]
    ours = adapter.preprocess(torch.stack(clips))
    assert ours["input_features"].shape == (2, 128, 3000)
    for row, clip in enumerate(clips):
        expected = processor_features(adapter, clip)
        deviation = (ours["input_features"][row] - expected["input_features"][0]).abs()
        assert deviation.max() < 1e-5 and deviation.mean() < 1e-7  # measured: 2.4e-7, 4.4e-9
        assert ours["feature_attention_mask"][row].dtype == expected["feature_attention_mask"].dtype
        assert torch.equal(ours["feature_attention_mask"][row], expected["feature_attention_mask"][0])


def test_gradients_reach_the_waveform(adapter: QwenAudioAdapter) -> None:
    waveform = make_clip(1.3).unsqueeze(0).requires_grad_(True)
    adapter.preprocess(waveform)["input_features"].sum().backward()
    assert waveform.grad is not None and waveform.grad.shape == waveform.shape
    assert torch.isfinite(waveform.grad).all() and waveform.grad.abs().sum() > 0


def test_prompt_text_expands_one_audio_token_per_40_ms(adapter: QwenAudioAdapter) -> None:
    text = adapter.prompt_text("What do you hear?", make_clip(2.0))
    assert set(text) == {"input_ids", "attention_mask"}
    assert text["input_ids"].shape == text["attention_mask"].shape and text["input_ids"].shape[0] == 1
    audio_token_id = adapter.model.config.audio_token_id
    assert int((text["input_ids"] == audio_token_id).sum()) == 50


def test_generate_returns_strings(adapter: QwenAudioAdapter) -> None:
    answers = adapter.generate([adapter.encode("What do you hear?", make_clip(1.0))], max_new_tokens=4)
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_batched_generation_equals_one_by_one(adapter: QwenAudioAdapter) -> None:
    queries = [
        adapter.encode("Hi?", make_clip(0.5, seed=0)),
        adapter.encode("Listen to the audio clip and say what you hear in detail.", make_clip(2.3, seed=1)),
        adapter.encode("Is there a bird or a car engine?", make_clip(7.0, seed=2)),
    ]
    assert len({q.text["input_ids"].shape[1] for q in queries}) == 3
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8}
    batched = adapter.generate(queries, **kwargs)
    single = [adapter.generate([query], **kwargs)[0] for query in queries]
    assert batched == single
    assert all(batched)


def test_audio_over_30_seconds_is_rejected(adapter: QwenAudioAdapter) -> None:
    too_long = torch.zeros(30 * SAMPLING_RATE + 1)
    with pytest.raises(InputError, match="30 s"):
        adapter.preprocess(too_long.unsqueeze(0))
    with pytest.raises(InputError, match="30 s"):
        adapter.encode("What do you hear?", too_long)


def test_image_noise_space_is_rejected(adapter: QwenAudioAdapter) -> None:
    adapter.check_noise_space("waveform")
    with pytest.raises(ConfigError, match="waveform"):
        adapter.check_noise_space("pixel")


PROMPTS = [
    "Hi?",
    "Listen to the audio clip and say what you hear in detail, every sound and when it starts. " * 10,
    "Что ты слышишь? 鳥の声 🐦 café — naïve “quotes”",
    "<|AUDIO|>\nWhat do you hear?",  # the audio placeholder, dropped by checked_prompt
]


# 0.5 s to 30 s, and odd sample counts around the 160-sample hop and the 40 ms token (640 samples).
NUM_SAMPLES = [8000, 16000, 32000, 59200, 480000, 1, 2, 3, 159, 161, 641, 12345, 16001, 479999]


def processor_text(adapter: QwenAudioAdapter, prompt: str, clip: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference: the HF processor on the full waveform (what ``prompt_text`` used to run)."""
    waveform = clip.numpy()
    encoded = adapter.processor(
        text=rendered_prompt(adapter, adapter.checked_prompt(prompt), waveform),
        audio=waveform,
        sampling_rate=SAMPLING_RATE,
        return_tensors="pt",
    )
    return {key: encoded[key] for key in ("input_ids", "attention_mask")}


@pytest.mark.parametrize("num_samples", NUM_SAMPLES)
def test_prompt_text_equals_the_processor(adapter: QwenAudioAdapter, num_samples: int) -> None:
    clip = make_clip(num_samples / SAMPLING_RATE, seed=num_samples % 7)
    assert clip.shape == (num_samples,)
    for prompt in PROMPTS:
        ours, expected = adapter.prompt_text(prompt, clip), processor_text(adapter, prompt, clip)
        assert set(ours) == set(expected)
        for key, value in expected.items():
            assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), (prompt, key)
    mask = adapter.preprocess(clip.unsqueeze(0))["feature_attention_mask"]
    assert adapter.log_mel.valid_frames(num_samples) == int(mask.sum())


def test_prompt_text_runs_no_processor(adapter: QwenAudioAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the HF processor was run")

    monkeypatch.setattr(type(adapter.processor), "__call__", refuse)
    monkeypatch.setattr(type(adapter.processor.feature_extractor), "__call__", refuse)
    adapter.prompt_ids.cache_clear()
    counts = [
        int((adapter.prompt_text("What?", make_clip(s))["input_ids"] == adapter.processor.audio_token_id).sum())
        for s in (0.5, 2.0, 30.0)
    ]
    assert counts == [12, 50, 750]  # ((L - 1) // 2 + 1 - 2) // 2 + 1 of L = 50, 200, 3000 frames
    assert adapter.prompt_ids.cache_info().misses == 1
