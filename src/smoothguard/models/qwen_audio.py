"""Qwen2-Audio family (``Qwen2AudioForConditionalGeneration``, e.g. ``Qwen/Qwen2-Audio-7B-Instruct``).

The processor turns a 16 kHz waveform into Whisper log-mel features (30 s window, 128 mel bins,
3000 frames); ``WhisperLogMel`` re-implements that path in torch so gradients reach the waveform.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from smoothguard.errors import InputError, UnsupportedError
from smoothguard.models.base import PROMPT_CACHE_SIZE, Generation, MLLMAdapter, PromptIds, Query


class WhisperLogMel(torch.nn.Module):
    """Differentiable ``WhisperFeatureExtractor`` as ``Qwen2AudioProcessor`` calls it
    (``padding="max_length"``, ``truncation=True``, ``return_attention_mask=True``, no dither, no
    normalisation).

    Waveforms [B, T] (samples in [-1, 1], ``0 < T <= n_samples``) -> ``input_features``
    [B, n_mels, n_samples // hop] and ``feature_attention_mask`` [B, n_samples // hop] (int32, 1
    for the ``ceil(T / hop)`` frames that start inside the clip).
    """

    def __init__(self, feature_extractor: Any) -> None:
        super().__init__()
        self.sampling_rate: int = int(feature_extractor.sampling_rate)
        self.n_samples: int = int(feature_extractor.n_samples)
        self.n_fft: int = int(feature_extractor.n_fft)
        self.hop_length: int = int(feature_extractor.hop_length)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        # [n_fft // 2 + 1, n_mels], slaney mel scale, as the extractor computed it.
        self.register_buffer(
            "mel_filters",
            torch.from_numpy(np.asarray(feature_extractor.mel_filters, np.float32)),
            persistent=False,
        )

    @property
    def max_seconds(self) -> float:
        return self.n_samples / self.sampling_rate

    def check_length(self, num_samples: int) -> None:
        """Raise ``InputError`` for an empty clip or one longer than the processor's window."""
        if num_samples == 0:
            raise InputError("the audio clip is empty; pass at least one sample")
        if num_samples > self.n_samples:
            raise InputError(
                f"the audio clip is {num_samples / self.sampling_rate:.2f} s long ({num_samples} samples at "
                f"{self.sampling_rate} Hz); this model reads at most {self.max_seconds:g} s "
                f"({self.n_samples} samples) and would silently drop the rest. Trim or split the clip."
            )

    @property
    def num_frames(self) -> int:
        """Feature frames per clip (the window padded to ``n_samples``): 3000 for Whisper."""
        return self.n_samples // self.hop_length

    def valid_frames(self, num_samples: int) -> int:
        """The frames of ``feature_attention_mask`` that are 1 for a clip of ``num_samples`` samples:
        those that start inside it, ``ceil(num_samples / hop)``, at most :attr:`num_frames`."""
        return min(-(-num_samples // self.hop_length), self.num_frames)

    def forward(self, waveforms: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, num_samples = waveforms.shape
        self.check_length(num_samples)
        window = self.window.to(waveforms.device)
        mel_filters = self.mel_filters.to(waveforms.device)
        padded = torch.nn.functional.pad(waveforms.float(), (0, self.n_samples - num_samples))
        # center=True reflect-pads n_fft // 2 on both sides: n_samples // hop + 1 frames; the last is dropped.
        stft = torch.stft(padded, self.n_fft, self.hop_length, window=window, return_complex=True)
        stft = stft[..., :-1]
        power = stft.real.square() + stft.imag.square()  # [B, n_fft // 2 + 1, frames]
        log_spec = torch.clamp(mel_filters.T @ power, min=1e-10).log10()  # [B, n_mels, frames]
        row_max = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, row_max - 8.0)
        features = (log_spec + 4.0) / 4.0
        num_frames = features.shape[-1]
        frame_starts = torch.arange(num_frames, device=waveforms.device) * self.hop_length
        mask = (frame_starts < num_samples).to(torch.int32).expand(batch, num_frames)
        return {"input_features": features, "feature_attention_mask": mask}


#: The fewest ``<|AUDIO|>`` tokens Qwen2-Audio's forward can take: it tells an expanded prompt by two
#: adjacent audio tokens, and reads one (or none) as an unexpanded prompt, which then fails (TypeError).
MIN_AUDIO_TOKENS = 2


class QwenAudioAdapter(MLLMAdapter):
    """Qwen2-Audio: Whisper-style audio encoder + Qwen2 LM; one ``<|AUDIO|>`` token per 40 ms of clip.

    Media are mono waveforms at ``sampling_rate`` (16000 Hz), at most 30 s; ``waveform`` noise is
    added to the samples before ``preprocess``.
    """

    family = "qwen2_audio"
    modality = "audio"
    noise_spaces = ("waveform",)

    @classmethod
    def model_class(cls) -> Any:
        from transformers import AutoModelForMultimodalLM

        return AutoModelForMultimodalLM

    def __init__(self, model: Any, processor: Any, name: str) -> None:
        super().__init__(model, processor, name)
        feature_extractor = getattr(processor, "feature_extractor", None)
        if feature_extractor is None:
            raise UnsupportedError(f"the processor of {name} has no audio feature extractor")
        self.log_mel = WhisperLogMel(feature_extractor)
        # The chat prompt's ids, tokenised once per prompt text (per adapter: no global state).
        self.prompt_ids = functools.lru_cache(maxsize=PROMPT_CACHE_SIZE)(self._prompt_ids)

    @property
    def sampling_rate(self) -> int:
        """Samples per second (Hz) the model's feature extractor expects."""
        return self.log_mel.sampling_rate

    def preprocess(self, media: torch.Tensor) -> dict[str, torch.Tensor]:
        """Waveforms [B, T] (one clip's copies, ``sampling_rate`` Hz) -> ``input_features``
        [B, 128, 3000] (float32) and ``feature_attention_mask`` [B, 3000] (int32), differentiable
        w.r.t. the waveform. Raises ``InputError`` for clips over 30 s."""
        if media.dim() != 2:
            raise InputError(f"expected waveforms [B, T], got a tensor of shape {tuple(media.shape)}")
        return self.log_mel(media)

    def conversation(self, prompt: str) -> list[dict[str, Any]]:
        """One user turn: an audio clip, then ``prompt``. The template writes the same placeholder text
        for every clip, so an empty one stands in."""
        clip = np.zeros(0, np.float32)
        return [{"role": "user", "content": [{"type": "audio", "audio": clip}, {"type": "text", "text": prompt}]}]

    def audio_token_count(self, num_samples: int) -> int:
        """``Qwen2AudioProcessor``'s ``<|AUDIO|>`` count for a clip of ``num_samples`` samples: from the
        ``L`` valid feature frames, the encoder's stride-2 convolution and 2x pooling,
        ``((L - 1) // 2 + 1 - 2) // 2 + 1`` (about one per 40 ms: 12 for 0.5 s, 50 for 2 s, 750 for 30 s;
        none for clips of 320 samples or fewer, under 3 frames, as the processor gives)."""
        frames = self.log_mel.valid_frames(num_samples)
        return (((frames - 1) // 2 + 1) - 2) // 2 + 1

    def _prompt_ids(self, prompt: str) -> PromptIds:
        """``prompt`` checked, in the chat template, tokenised as the processor tokenises it. The
        template writes the same placeholder text for every clip (``conversation``)."""
        text = self.chat_prompt(self.checked_prompt(prompt))
        return PromptIds.split(self.tokenizer(text)["input_ids"], self.processor.audio_token_id, self.name)

    def prompt_text(self, prompt: str, media: torch.Tensor) -> dict[str, torch.Tensor]:
        """Token ids [1, L] for ``prompt`` with ``<|AUDIO|>`` expanded for the waveform ``media`` [T]:
        ``input_ids`` and ``attention_mask``, as the processor gives them. The chat prompt is tokenised
        once per prompt (``prompt_ids``, LRU) and its placeholder repeated ``audio_token_count(T)``
        times; the waveform itself is not processed."""
        if media.dim() != 1:
            raise InputError(f"expected one mono waveform [T], got a tensor of shape {tuple(media.shape)}")
        self.log_mel.check_length(media.shape[0])
        input_ids = self.prompt_ids(prompt).expand(self.audio_token_count(media.shape[0]))
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    def complete(self, queries: Sequence[Query], **generate_kwargs: Any) -> list[Generation]:
        """As :meth:`MLLMAdapter.complete`; ``InputError`` for a clip too short for the model (under
        ``MIN_AUDIO_TOKENS`` audio tokens: 960 samples, 0.06 s, or fewer at 16 kHz)."""
        for query in queries:
            count = int((query.text["input_ids"] == self.processor.audio_token_id).sum())
            if count < MIN_AUDIO_TOKENS:
                # Frames of one hop each; ``audio_token_count`` gives 2 tokens from 7 frames on.
                shortest = 6 * self.log_mel.hop_length + 1
                raise InputError(
                    f"the audio clip is too short for this model ({count} audio tokens; Qwen2-Audio needs "
                    f"{MIN_AUDIO_TOKENS}): send at least {shortest} samples "
                    f"({shortest / self.sampling_rate:.3f} s at {self.sampling_rate} Hz), e.g. padded with silence"
                )
        return super().complete(queries, **generate_kwargs)
