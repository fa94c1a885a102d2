"""What every image adapter shares: the chat prompt with one image, token expansion through the
HF processor, and the normalisation constants of its differentiable pixel path."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from smoothguard.errors import UnsupportedError
from smoothguard.models.base import MLLMAdapter

#: Per-token keys of a processor's text output that ``generate`` needs; Qwen-VL adds
#: ``mm_token_type_ids`` (0 text, 1 image) for its 3-D rotary positions.
TEXT_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")


def to_uint8_image(pixels: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] (or already uint8) -> uint8 [H, W, 3], the form HF processors expect."""
    if pixels.dtype != torch.uint8:
        pixels = (pixels.detach().float().clamp(0, 1) * 255).round().byte()
    return pixels.permute(1, 2, 0).cpu().numpy()


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

    @classmethod
    def build_pixel_path(cls, image_processor: Any) -> Any:
        """The differentiable equivalent of ``image_processor`` (has ``mean`` and ``std``)."""
        raise NotImplementedError

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The processor's per-channel normalisation constants (pixel units in [0, 1])."""
        return self.pixel_path.mean, self.pixel_path.std

    def chat_prompt(self, prompt: str) -> str:
        """``prompt`` in the model's chat template, with one image before it."""
        if getattr(self.processor, "chat_template", None) is None:
            raise UnsupportedError(f"{self.name} ships no chat template; pass a model folder that has one")
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def prompt_text(self, prompt: str, media: torch.Tensor) -> dict[str, torch.Tensor]:
        # The processor expands the image placeholder to the image's token count; the pixel values
        # it computes on the way are discarded (ours come from ``preprocess``).
        text = self.chat_prompt(self.checked_prompt(prompt))
        encoded = self.processor(text=text, images=to_uint8_image(media), return_tensors="pt")
        return {key: encoded[key] for key in self.text_keys if key in encoded}
