"""LLaVA-1.5 family (``LlavaForConditionalGeneration``, e.g. ``llava-hf/llava-1.5-7b-hf``), and the
generic image-text adapter for other ``AutoModelForImageTextToText`` models whose image processor
is CLIP-style (resize, centre crop, mean/std) and gives one ``pixel_values`` row per image."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from smoothguard.errors import UnsupportedError
from smoothguard.models.base import MLLMAdapter
from smoothguard.models.image_ops import ClipStylePreprocessor

# The prompt format of llava-hf/llava-1.5-*-hf, used when a checkpoint ships no chat template.
LLAVA_15_PROMPT = "USER: <image>\n{prompt} ASSISTANT:"


def to_uint8_image(pixels: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> uint8 [H, W, 3], the form HF processors expect."""
    return (pixels.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


class ClipStyleImageAdapter(MLLMAdapter):
    """Image-text model whose processor produces ``pixel_values`` [B, 3, S, S] with a CLIP-style
    image processor. ``normalized`` noise is added to those ``pixel_values``; ``pixel`` noise to the
    [0, 1] pixels before ``preprocess``."""

    family = "image-text-to-text"
    modality = "image"
    noise_spaces = ("normalized", "pixel")

    def __init__(self, model: Any, processor: Any, name: str) -> None:
        super().__init__(model, processor, name)
        image_processor = getattr(processor, "image_processor", None)
        if image_processor is None:
            raise UnsupportedError(f"the processor of {name} has no image processor")
        self.pixel_path = ClipStylePreprocessor.from_image_processor(image_processor)

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The processor's per-channel normalisation constants (pixel units in [0, 1])."""
        return self.pixel_path.mean, self.pixel_path.std

    def preprocess(self, media: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pixels [B, 3, H, W] in [0, 1] -> ``{"pixel_values": [B, 3, S, S]}``, differentiable."""
        return {"pixel_values": self.pixel_path(media.float())}

    def chat_prompt(self, prompt: str) -> str:
        """``prompt`` in the model's chat template, with one image placeholder."""
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        if getattr(self.processor, "chat_template", None) is None:
            raise UnsupportedError(f"{self.name} ships no chat template; pass a model folder that has one")
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def prompt_text(self, prompt: str, media: torch.Tensor) -> dict[str, torch.Tensor]:
        # The processor expands the image placeholder to the number of image tokens; the pixel
        # values it computes on the way are discarded (ours come from ``preprocess``).
        encoded = self.processor(text=self.chat_prompt(prompt), images=to_uint8_image(media), return_tensors="pt")
        return {key: value for key, value in encoded.items() if key in ("input_ids", "attention_mask")}


class LlavaAdapter(ClipStyleImageAdapter):
    """LLaVA-1.5: CLIP ViT-L/336 vision tower + Llama/Vicuna; 576 image tokens at 336 px."""

    family = "llava"

    def chat_prompt(self, prompt: str) -> str:
        if getattr(self.processor, "chat_template", None) is None:
            return LLAVA_15_PROMPT.format(prompt=prompt)
        return super().chat_prompt(prompt)
