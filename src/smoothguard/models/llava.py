"""LLaVA-1.5 family (``LlavaForConditionalGeneration``, e.g. ``llava-hf/llava-1.5-7b-hf``), and the
CLIP-style image adapter it shares with the generic fallback: one ``pixel_values`` row [3, S, S]
per image from a resize / centre-crop / mean-std image processor."""

from __future__ import annotations

from typing import Any

import torch

from smoothguard.models.image import ImageAdapter
from smoothguard.models.image_ops import ClipStylePreprocessor

# The prompt format of llava-hf/llava-1.5-*-hf, used when a checkpoint ships no chat template.
LLAVA_15_PROMPT = "USER: <image>\n{prompt} ASSISTANT:"


class ClipStyleImageAdapter(ImageAdapter):
    """Image-text model whose processor gives ``pixel_values`` [B, 3, S, S] (CLIP-style)."""

    family = "image-text-to-text"

    @classmethod
    def build_pixel_path(cls, image_processor: Any) -> ClipStylePreprocessor:
        return ClipStylePreprocessor.from_image_processor(image_processor)

    def preprocess(self, media: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pixels [B, 3, H, W] in [0, 1] -> ``{"pixel_values": [B, 3, S, S]}``, differentiable."""
        return {"pixel_values": self.pixel_path(media.float())}


class LlavaAdapter(ClipStyleImageAdapter):
    """LLaVA-1.5: CLIP ViT-L/336 vision tower + Llama/Vicuna; 576 image tokens at 336 px."""

    family = "llava"

    def chat_prompt(self, prompt: str) -> str:
        if getattr(self.processor, "chat_template", None) is None:
            return LLAVA_15_PROMPT.format(prompt=prompt)
        return super().chat_prompt(prompt)
