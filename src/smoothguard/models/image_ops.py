"""Differentiable torch versions of the HF image-processor steps (pad to square, resize, centre crop,
normalise), for pixels in [0, 1]. Bicubic resizing uses torch's antialiased kernel, which follows
PIL's (a = -0.5), in PIL's two 1-D passes (horizontal first), each clamped to [0, 1] as PIL's 8-bit
output is; only PIL's rounding to 8 bits after each pass is left out (about 1/255 at most)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from smoothguard.errors import UnsupportedError

# PIL resample codes used by HF image processors -> torch interpolate modes.
_RESAMPLE_MODES = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def resample_mode(resample: Any) -> str:
    """Torch interpolation mode for a HF ``resample`` value (PIL code or enum)."""
    code = int(getattr(resample, "value", resample))
    if code not in _RESAMPLE_MODES:
        raise UnsupportedError(f"image resample mode {resample!r} has no differentiable equivalent here")
    return _RESAMPLE_MODES[code]


def resize(pixels: torch.Tensor, height: int, width: int, mode: str = "bicubic") -> torch.Tensor:
    """[B, C, H, W] -> [B, C, height, width], antialiased when shrinking, clamped to [0, 1].

    As PIL resizes an 8-bit image (``ImagingResampleInner``): the width first, then the height, each
    pass clamped. Bicubic overshoots past 0 and 1 at hard edges and on noise; clamping only at the end
    would let that overshoot into the second pass, up to ~25/255 away from PIL at such pixels.
    """
    if pixels.shape[-2:] == (height, width):
        return pixels
    if pixels.shape[-1] != width:
        pixels = _resize_pass(pixels, pixels.shape[-2], width, mode)
    if pixels.shape[-2] != height:
        pixels = _resize_pass(pixels, height, width, mode)
    return pixels


def _resize_pass(pixels: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """One interpolation of [B, C, H, W] to (height, width), clamped to [0, 1]."""
    antialias = mode in ("bilinear", "bicubic")
    kwargs: dict[str, Any] = {"antialias": antialias, "align_corners": False} if antialias else {}
    return F.interpolate(pixels, size=(height, width), mode=mode, **kwargs).clamp(0.0, 1.0)


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """Output (height, width) when the shorter side becomes ``shortest_edge`` (HF rounding: int())."""
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_short, new_long) if height <= width else (new_long, new_short)


def center_crop(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """HF ``center_crop``: crop [B, C, H, W] to (height, width), zero-padding first if too small."""
    h, w = pixels.shape[-2:]
    pad_h, pad_w = max(height - h, 0), max(width - w, 0)
    if pad_h or pad_w:
        top, left = math.ceil(pad_h / 2), math.ceil(pad_w / 2)
        pixels = F.pad(pixels, (left, pad_w - left, top, pad_h - top))
        h, w = pixels.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    return pixels[..., top : top + height, left : left + width]


def pad_to_square(pixels: torch.Tensor, fill: Sequence[float]) -> torch.Tensor:
    """LLaVA's ``pad_to_square``: centre [B, C, H, W] on a square of colour ``fill`` (per channel, [0, 1])."""
    h, w = pixels.shape[-2:]
    if h == w:
        return pixels
    side = max(h, w)
    canvas = torch.as_tensor(fill, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    canvas = canvas.expand(pixels.shape[0], -1, side, side).clone()
    top, left = (side - h) // 2, (side - w) // 2
    canvas[..., top : top + h, left : left + w] = pixels
    return canvas


@dataclass(frozen=True)
class ClipStylePreprocessor:
    """The CLIP / LLaVA image-processor pipeline as a differentiable function.

    ``__call__``: pixels [B, 3, H, W] in [0, 1] -> normalised ``pixel_values`` [B, 3, h, w]
    (``(x - mean) / std``; normalised units = pixel units / std, e.g. 1 pixel unit ~ 3.7 for CLIP).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    shortest_edge: int | None = None
    size_hw: tuple[int, int] | None = None
    crop_hw: tuple[int, int] | None = None
    pad_square: bool = False
    mode: str = "bicubic"

    @classmethod
    def from_image_processor(cls, ip: Any) -> ClipStylePreprocessor:
        """Read the settings of a CLIP-style HF image processor; UnsupportedError if it is not one."""
        if not getattr(ip, "do_normalize", True) or getattr(ip, "image_mean", None) is None:
            raise UnsupportedError(f"{type(ip).__name__} does not normalise with a mean/std")
        if not getattr(ip, "do_rescale", True) or abs(getattr(ip, "rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
            raise UnsupportedError(f"{type(ip).__name__} does not rescale 8-bit pixels by 1/255")
        size = dict(getattr(ip, "size", None) or {}) if getattr(ip, "do_resize", True) else {}
        shortest_edge = size.get("shortest_edge")
        size_hw = (size["height"], size["width"]) if "height" in size and "width" in size else None
        if getattr(ip, "do_resize", True) and shortest_edge is None and size_hw is None:
            raise UnsupportedError(f"{type(ip).__name__} resizes with {size!r}, which is not supported")
        crop = dict(getattr(ip, "crop_size", None) or {}) if getattr(ip, "do_center_crop", False) else {}
        crop_hw = (crop["height"], crop["width"]) if crop else None
        return cls(
            mean=tuple(float(m) for m in ip.image_mean),
            std=tuple(float(s) for s in ip.image_std),
            shortest_edge=shortest_edge,
            size_hw=size_hw,
            crop_hw=crop_hw,
            pad_square=bool(getattr(ip, "do_pad", False)),
            mode=resample_mode(getattr(ip, "resample", 3)),
        )

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.pad_square:
            # HF pads 8-bit images with int(mean * 255).
            pixels = pad_to_square(pixels, [int(m * 255) / 255 for m in self.mean])
        h, w = pixels.shape[-2:]
        if self.shortest_edge is not None:
            pixels = resize(pixels, *shortest_edge_size(h, w, self.shortest_edge), mode=self.mode)
        elif self.size_hw is not None:
            pixels = resize(pixels, *self.size_hw, mode=self.mode)
        if self.crop_hw is not None:
            pixels = center_crop(pixels, *self.crop_hw)
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
        return (pixels - mean) / std
