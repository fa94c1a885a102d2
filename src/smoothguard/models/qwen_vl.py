"""Qwen2-VL and Qwen2.5-VL families (``Qwen2VLForConditionalGeneration`` /
``Qwen2_5_VLForConditionalGeneration``, e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``).

The image processor resizes each image to a multiple of ``patch_size * merge_size`` pixels
(``smart_resize``), normalises it, repeats it ``temporal_patch_size`` times and cuts it into
``P = (H / patch_size) * (W / patch_size)`` flattened patches: ``pixel_values`` [P, C*T*ps*ps] per
image plus ``image_grid_thw`` [1, 3] = (1, H / ps, W / ps). ``QwenVLPreprocessor`` does the same in
torch so gradients reach the pixels. Both versions share that processor and this adapter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from smoothguard.errors import InputError, UnsupportedError
from smoothguard.models.image import ImageAdapter
from smoothguard.models.image_ops import resample_mode, resize


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's output size for an image of (height, width): both sides multiples of ``factor``,
    ``min_pixels <= h * w <= max_pixels``, aspect ratio kept as well as possible (HF rounding)."""
    if max(height, width) / min(height, width) > 200:
        raise InputError(
            f"the image is {height}x{width} pixels; Qwen-VL needs an aspect ratio below 200, crop or pad it"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class QwenVLPreprocessor:
    """The Qwen2-VL image processor as a differentiable function.

    ``__call__``: pixels [B, 3, H, W] in [0, 1] -> ``pixel_values`` [B * P, 3 * T * ps * ps]
    (normalised: ``(x - mean) / std``, patches in HF order) and ``image_grid_thw`` [B, 3] (int64,
    ``(1, h / ps, w / ps)`` for the ``smart_resize`` output size (h, w); every copy has the same grid).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    min_pixels: int
    max_pixels: int
    mode: str = "bicubic"

    @classmethod
    def from_image_processor(cls, ip: Any) -> QwenVLPreprocessor:
        """Read the settings of a ``Qwen2VLImageProcessor`` (either backend)."""
        if not getattr(ip, "do_normalize", True) or not getattr(ip, "do_resize", True):
            raise UnsupportedError(f"{type(ip).__name__} must resize and normalise for the differentiable path")
        if not getattr(ip, "do_rescale", True) or abs(getattr(ip, "rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
            raise UnsupportedError(f"{type(ip).__name__} does not rescale 8-bit pixels by 1/255")
        return cls(
            mean=tuple(float(m) for m in ip.image_mean),
            std=tuple(float(s) for s in ip.image_std),
            patch_size=int(ip.patch_size),
            merge_size=int(ip.merge_size),
            temporal_patch_size=int(ip.temporal_patch_size),
            min_pixels=int(ip.size["shortest_edge"]),
            max_pixels=int(ip.size["longest_edge"]),
            mode=resample_mode(getattr(ip, "resample", 3)),
        )

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of this size is resized to."""
        factor = self.patch_size * self.merge_size
        return smart_resize(height, width, factor, self.min_pixels, self.max_pixels)

    def __call__(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, channels = pixels.shape[:2]
        height, width = self.output_size(*pixels.shape[-2:])
        pixels = resize(pixels, height, width, mode=self.mode)
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        pixels = (pixels - mean) / std
        ps, ms, tps = self.patch_size, self.merge_size, self.temporal_patch_size
        grid_h, grid_w = height // ps, width // ps
        patches = pixels.reshape(batch, channels, grid_h // ms, ms, ps, grid_w // ms, ms, ps)
        # [B, gh/m, gw/m, m, m, C, ps, ps]: merge windows row-major, then C, then the patch.
        patches = patches.permute(0, 2, 5, 3, 6, 1, 4, 7)
        # One still image fills every temporal slot: [B, gh/m, gw/m, m, m, C, T, ps, ps].
        patches = patches.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, tps, -1, -1)
        pixel_values = patches.reshape(batch * grid_h * grid_w, channels * tps * ps * ps)
        grid = torch.tensor([[1, grid_h, grid_w]], dtype=torch.long, device=pixels.device).expand(batch, 3)
        return {"pixel_values": pixel_values, "image_grid_thw": grid.contiguous()}


#: Image-processor class names that checkpoints saved by earlier releases carry and transformers no
#: longer has -> the current class (the legacy ``Fast`` suffix is dropped first, as transformers does).
#: The first hub upload of Qwen2.5-VL named ``Qwen2_5_VLImageProcessor``; both versions use Qwen2-VL's.
RENAMED_IMAGE_PROCESSORS = {"Qwen2_5_VLImageProcessor": "Qwen2VLImageProcessor"}


def current_image_processor_name(name: str | None) -> str | None:
    """The current name of the image-processor class ``name``, or ``None`` when it was not renamed."""
    if name is None:
        return None
    return RENAMED_IMAGE_PROCESSORS.get(name.removesuffix("Fast"))


def load_image_processor(source: str, **kwargs: Any) -> Any:
    """The image processor of checkpoint ``source``, with a renamed class name mapped to its current one.

    Reads the checkpoint's image-processor settings (``processor_config.json``'s nested
    ``image_processor`` or ``preprocessor_config.json``), and where ``image_processor_type`` names a
    class in ``RENAMED_IMAGE_PROCESSORS`` builds the current class from them (torchvision backend where
    torchvision is installed, else PIL); otherwise ``AutoImageProcessor``. Nothing is written to
    ``source``.
    """
    from transformers import AutoImageProcessor, ImageProcessingMixin
    from transformers.models.auto.image_processing_auto import get_image_processor_class_from_name
    from transformers.utils import is_torchvision_available

    settings, unused = ImageProcessingMixin.get_image_processor_dict(source, **kwargs)
    name = current_image_processor_name(settings.get("image_processor_type"))
    if name is None:
        return AutoImageProcessor.from_pretrained(source, **kwargs)
    backends = [name, f"{name}Pil"] if is_torchvision_available() else [f"{name}Pil", name]
    for class_name in backends:
        image_processor_class = get_image_processor_class_from_name(class_name)
        if image_processor_class is not None and not getattr(image_processor_class, "is_dummy", False):
            return image_processor_class.from_dict({**settings, "image_processor_type": class_name}, **unused)
    raise UnsupportedError(
        f"{source} names the image processor {settings['image_processor_type']!r}, now {name!r}, "
        "which this transformers cannot build; upgrade transformers"
    )


def needs_image_only_processor(exc: BaseException, source: str, **kwargs: Any) -> bool:
    """Whether ``AutoProcessor`` failed with ``exc`` on what an image-only processor avoids: the video
    processor (no torchvision, or no video config) or a renamed image-processor class."""
    from transformers import ImageProcessingMixin

    message = str(exc).lower()
    if any(part in message for part in ("video processor", "videoprocessor", "torchvision")):
        return True
    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(source, **kwargs)
    except (OSError, ValueError):
        return False
    return current_image_processor_name(settings.get("image_processor_type")) is not None


def image_only_processor_class(processor_class: type) -> type:
    """``processor_class`` (``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor``) without a video processor.

    ``ProcessorMixin`` takes its sub-processors from the ``__init__`` parameters and type-checks each
    (the video check needs torchvision), so this ``__init__`` has no ``video_processor``; the ``None``
    passed on for it is dropped. The class keeps its HF name, so ``save_pretrained`` writes the
    folder a full processor would, minus the video processor.
    """

    def __init__(
        self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any
    ) -> None:
        processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return type(processor_class.__name__, (processor_class,), {"__init__": __init__, "__module__": __name__})


class QwenVLAdapter(ImageAdapter):
    """Qwen2-VL / Qwen2.5-VL: a ViT over 14 px patches, 2x2 patches merged into one LLM token, and
    3-D rotary positions (temporal, row, column) for the image tokens.

    ``family`` is ``"qwen_vl"`` for both versions (same processor and adapter; ``name`` and the
    model's ``config.model_type`` tell them apart). ``normalized`` noise is added to the patch rows
    of ``pixel_values``; ``pixel`` noise to the [0, 1] pixels before ``preprocess``.
    """

    family = "qwen_vl"

    @classmethod
    def load_processor(cls, source: str, **kwargs: Any) -> Any:
        """The checkpoint's processor via ``AutoProcessor``. Where that fails on the VIDEO processor
        (transformers 5.x builds it only with torchvision, and a folder may have no video config) or on
        an image processor class that was renamed since the checkpoint was saved
        (``RENAMED_IMAGE_PROCESSORS``): an image-only ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` from
        the checkpoint's image processor (``load_image_processor``: PIL backend without torchvision),
        tokenizer and chat template. Other errors propagate; the checkpoint's files are only read.
        """
        from transformers import (
            AutoConfig,
            AutoProcessor,
            AutoTokenizer,
            Qwen2_5_VLProcessor,
            Qwen2VLProcessor,
        )

        try:
            return AutoProcessor.from_pretrained(source, **kwargs)
        except (ImportError, OSError, ValueError) as exc:
            if not needs_image_only_processor(exc, source, **kwargs):
                raise
        model_type = AutoConfig.from_pretrained(source, **kwargs).model_type
        processor_class = Qwen2_5_VLProcessor if model_type == "qwen2_5_vl" else Qwen2VLProcessor
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        processor_dict, _ = processor_class.get_processor_dict(source, **kwargs)
        chat_template = processor_dict.get("chat_template") or tokenizer.chat_template
        return image_only_processor_class(processor_class)(
            image_processor=load_image_processor(source, **kwargs),
            tokenizer=tokenizer,
            chat_template=chat_template,
        )

    @classmethod
    def build_pixel_path(cls, image_processor: Any) -> QwenVLPreprocessor:
        return QwenVLPreprocessor.from_image_processor(image_processor)

    def preprocess(self, media: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pixels [B, 3, H, W] in [0, 1] -> ``pixel_values`` [B * P, 3 * T * ps * ps] and
        ``image_grid_thw`` [B, 3]; differentiable w.r.t. the pixels."""
        return self.pixel_path(media.float())

    def image_token_count(self, height: int, width: int) -> int:
        """``Qwen2VLProcessor.replace_image_token``'s count for an image of this size: the patches of
        its ``smart_resize`` grid, ``(h / patch) * (w / patch)`` (one temporal slot), over the
        ``merge_size ** 2`` patches merged into one token."""
        path = self.pixel_path
        out_height, out_width = path.output_size(height, width)
        return (out_height // path.patch_size) * (out_width // path.patch_size) // path.merge_size**2

    def split_media(self, media: dict[str, torch.Tensor], count: int) -> list[dict[str, torch.Tensor]]:
        """Each copy's rows of ``pixel_values`` ([P, D], P = t * h * w of its grid) and its ``image_grid_thw``
        row ([1, 3]); the grid is read back from the device once for all copies, not once per copy."""
        grid = media["image_grid_thw"]
        rows = grid.prod(dim=-1).tolist()
        pieces = media["pixel_values"].split(rows)
        return [{"pixel_values": pieces[i], "image_grid_thw": grid[i : i + 1]} for i in range(count)]
