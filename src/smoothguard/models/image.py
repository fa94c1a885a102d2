"""What every image adapter shares: the chat prompt with one image, its image placeholder expanded to
the image's token count (computed from the image's size, without running the HF processor on the
image), and the normalisation constants of its differentiable pixel path."""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np
import torch

from smoothguard.errors import UnsupportedError
from smoothguard.models.base import PROMPT_CACHE_SIZE, MLLMAdapter, PromptIds

#: Per-token keys of a processor's text output that ``generate`` needs; Qwen-VL adds
#: ``mm_token_type_ids`` (0 text, 1 image) for its 3-D rotary positions.
TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def to_uint8_image(pixels: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] (or already uint8) -> uint8 [H, W, 3], the form HF processors expect."""
    if pixels.dtype != torch.uint8:
        pixels = (pixels.detach().float().clamp(0, 1) * 255).round().byte()
    return pixels.permute(1, 2, 0).cpu().numpy()


def mm_token_type_ids(processor: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """What ``ProcessorMixin.create_mm_token_type_ids`` gives for ``input_ids`` [1, L]: 1 on the
    processor's image token ids, 2 on its video ones, 3 on its audio ones, 0 elsewhere (int64)."""
    types = torch.zeros_like(input_ids)
    for value, attribute in ((1, "image_token_ids"), (2, "video_token_ids"), (3, "audio_token_ids")):
        ids = [token for token in getattr(processor, attribute, None) or [] if token is not None]
        if ids:
            types[torch.isin(input_ids, torch.tensor(ids, dtype=input_ids.dtype))] = value
    return types


class ImageAdapter(MLLMAdapter):
    """An image-text model. Subclasses set ``pixel_path`` from the image processor
    (``build_pixel_path``) and implement ``preprocess`` with it. ``normalized`` noise is added to
    ``pixel_values``; ``pixel`` noise to the [0, 1] pixels before ``preprocess``."""

    modality = "image"
    noise_spaces = ("normalized", "pixel")
    text_keys: ClassVar[tuple[str, ...]] = TEXT_KEYS

    def __init__(self, model: Any, processor: Any, name: str) -> None:
        super().__init__(model, processor, name)
        image_processor = getattr(processor, "image_processor", None)
        if image_processor is None:
            raise UnsupportedError(f"the processor of {name} has no image processor")
        self.pixel_path = self.build_pixel_path(image_processor)
        # The chat prompt's ids, tokenised once per prompt text (per adapter: no global state).
        self.prompt_ids = functools.lru_cache(maxsize=PROMPT_CACHE_SIZE)(self._prompt_ids)

    @classmethod
    def build_pixel_path(cls, image_processor: Any) -> Any:
        """The differentiable equivalent of ``image_processor`` (has ``mean`` and ``std``)."""
        raise NotImplementedError

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The processor's per-channel normalisation constants (pixel units in [0, 1])."""
        return self.pixel_path.mean, self.pixel_path.std

    def conversation(self, prompt: str) -> list[dict[str, Any]]:
        """One user turn: the image, then ``prompt``."""
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]

    def image_token_count(self, height: int, width: int) -> int | None:
        """How many tokens the HF processor expands the image placeholder to for an image of
        ``height`` x ``width`` pixels, computed from the size alone; ``None`` where this adapter cannot
        tell for its processor (``prompt_text`` then runs the processor on the image)."""
        return None

    def _prompt_ids(self, prompt: str) -> PromptIds:
        """``prompt`` checked, in the chat template, tokenised as the processor tokenises it."""
        text = self.chat_prompt(self.checked_prompt(prompt))
        return PromptIds.split(self.tokenizer(text)["input_ids"], self.processor.image_token_id, self.name)

    def prompt_text(self, prompt: str, media: torch.Tensor) -> dict[str, torch.Tensor]:
        """The processor's text output for ``prompt`` and the image ``media`` [3, H, W]: ``input_ids``,
        ``attention_mask`` and, where the processor returns them, ``mm_token_type_ids``, each [1, L]. The
        chat prompt is tokenised once per prompt (``prompt_ids``, LRU) and its image placeholder repeated
        ``image_token_count(H, W)`` times; the image itself is not processed."""
        count = self.image_token_count(*media.shape[-2:])
        if count is None:
            return self.processor_prompt_text(prompt, media)
        input_ids = self.prompt_ids(prompt).expand(count)
        text = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if "mm_token_type_ids" in self.text_keys and getattr(self.processor, "return_mm_token_type_ids", False):
            text["mm_token_type_ids"] = mm_token_type_ids(self.processor, input_ids)
        return text

    def processor_prompt_text(self, prompt: str, media: torch.Tensor) -> dict[str, torch.Tensor]:
        """``prompt_text`` through the HF processor, for a processor whose token count
        ``image_token_count`` cannot compute: it expands the image placeholder, and the pixel values it
        computes on the way are discarded (ours come from ``preprocess``)."""
        text = self.chat_prompt(self.checked_prompt(prompt))
        encoded = self.processor(text=text, images=to_uint8_image(media), return_tensors="pt")
        return {key: encoded[key] for key in self.text_keys if key in encoded}
