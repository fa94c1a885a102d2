"""LLaVA-1.5 family (``LlavaForConditionalGeneration``, e.g. ``llava-hf/llava-1.5-7b-hf``), and the
CLIP-style image adapter it shares with the generic fallback: one ``pixel_values`` row [3, S, S]
per image from a resize / centre-crop / mean-std image processor."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import torch

from smoothguard.models.image import ImageAdapter
from smoothguard.models.image_ops import ClipStylePreprocessor, shortest_edge_size

# The prompt format of llava-hf/llava-1.5-*-hf, used when a checkpoint ships no chat template.
LLAVA_15_PROMPT = "USER: <image>\n{prompt} ASSISTANT:"


def clip_output_size(path: ClipStylePreprocessor, height: int, width: int) -> tuple[int, int]:
    """The (height, width) of the ``pixel_values`` ``path`` makes of an image of (height, width)."""
    if path.pad_square:
        height = width = max(height, width)
    if path.shortest_edge is not None:
        height, width = shortest_edge_size(height, width, path.shortest_edge)
    elif path.size_hw is not None:
        height, width = path.size_hw
    if path.crop_hw is not None:
        height, width = path.crop_hw
    return height, width


def expands_like_llava(processor: Any) -> bool:
    """Whether ``processor`` expands its image placeholder as transformers' ``LlavaProcessor`` does
    (a ``LlavaProcessor`` with its own ``replace_image_token`` and a patch size)."""
    from transformers import LlavaProcessor

    return (
        isinstance(processor, LlavaProcessor)
        and type(processor).replace_image_token is LlavaProcessor.replace_image_token
        and getattr(processor, "patch_size", None) is not None
    )


class ClipStyleImageAdapter(ImageAdapter):
    """Image-text model whose processor gives ``pixel_values`` [B, 3, S, S] (CLIP-style). With a
    ``LlavaProcessor`` the image token count is computed from the image size; with any other
    processor ``prompt_text`` runs the processor on the image."""

    family = "image-text-to-text"

    @classmethod
    def build_pixel_path(cls, image_processor: Any) -> ClipStylePreprocessor:
        return ClipStylePreprocessor.from_image_processor(image_processor)

    def preprocess(self, media: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pixels [B, 3, H, W] in [0, 1] -> ``{"pixel_values": [B, 3, S, S]}``, differentiable."""
        return {"pixel_values": self.pixel_path(media.float())}

    @cached_property
    def _llava_processor(self) -> bool:
        return expands_like_llava(self.processor)

    def image_token_count(self, height: int, width: int) -> int | None:
        """``LlavaProcessor.replace_image_token``'s count for the ``pixel_values`` of an image of this
        size: ``(h // patch) * (w // patch) + num_additional_image_tokens``, less the CLS token where
        ``vision_feature_select_strategy`` is ``"default"`` (LLaVA-1.5 at 336 px / 14 px: 576, for
        every image size, as the centre crop fixes h and w). ``None`` for other processors."""
        if not self._llava_processor:
            return None
        processor = self.processor
        out_height, out_width = clip_output_size(self.pixel_path, height, width)
        count = (out_height // processor.patch_size) * (out_width // processor.patch_size)
        count += processor.num_additional_image_tokens
        if processor.vision_feature_select_strategy == "default":
            count -= 1
        return count


class LlavaAdapter(ClipStyleImageAdapter):
    """LLaVA-1.5: CLIP ViT-L/336 vision tower + Llama/Vicuna; 576 image tokens at 336 px."""

    family = "llava"

    def chat_prompt(self, prompt: str) -> str:
        if getattr(self.processor, "chat_template", None) is None:
            return LLAVA_15_PROMPT.format(prompt=prompt)
        return super().chat_prompt(prompt)

    @cached_property
    def answer_prefix(self) -> str:
        """As the template says; without a template, LLaVA-1.5's format (``ASSISTANT: answer``): a space."""
        if getattr(self.processor, "chat_template", None) is None:
            return " "
        return super().answer_prefix
