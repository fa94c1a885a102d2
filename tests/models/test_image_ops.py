"""Tests of ``smoothguard.models.image_ops``."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from smoothguard.inputs import load_image
from smoothguard.models.image_ops import ClipStylePreprocessor, center_crop, pad_to_square
from support.common import SHARED, needs_reference

LLAVA_CONFIG = SHARED / "fixtures" / "model-configs" / "llava-1.5-7b-hf" / "preprocessor_config.json"


# int(mean * 255) of CLIP's mean (0.48145466, 0.4578275, 0.40821073) * 255 = (122.77, 116.75, 104.09):
# the colour LLaVA pads with (its expand2square, and transformers' LlavaImageProcessor with do_pad).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


PAD_COLOUR = (122, 116, 104)


def smooth_uint8(height, width, seed=0):
    """uint8 [H, W, 3]: random colours bilinearly upsampled (photo-like)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((max(height // 16, 2), max(width // 16, 2), 3)) * 255).astype(np.uint8))
    return np.asarray(small.resize((width, height), Image.BILINEAR))


def llava_pad_processor():
    """LLaVA-1.5's real image processor settings (336 px, CLIP mean/std, bicubic), padding to square."""
    from transformers import LlavaImageProcessorPil

    settings = json.loads(LLAVA_CONFIG.read_text())
    for key in ("image_processor_type", "processor_class"):
        settings.pop(key)
    return LlavaImageProcessorPil(**settings, do_pad=True)


@needs_reference(LLAVA_CONFIG.parent, "LLaVA-1.5's real preprocessor_config.json in ../shared")
@pytest.mark.parametrize(("height", "width"), [(91, 200), (150, 61)], ids=["landscape", "portrait"])
def test_pad_to_square_path_matches_llavas_padding_processor(height, width):
    """Ours (pad, resize, crop, normalise in torch) against transformers' LLaVA processor with do_pad on
    LLaVA-1.5's real config: within the README's preprocessing bound (1.12/255, +10% as in
    test_real_configs), and the pad bands exactly the hand-computed (int(mean * 255) / 255 - mean) / std.
    Odd padding (109 and 89 pixels) puts the extra row or column after the image: a ceil instead of a
    floor, the wrong pad colour (mean * 255 unrounded, 0, the normalised mean) or a missing pad all fail."""
    processor = llava_pad_processor()
    path = ClipStylePreprocessor.from_image_processor(processor)
    assert path.pad_square and path.mean == CLIP_MEAN and path.crop_hw == (336, 336)
    image = smooth_uint8(height, width, seed=height)
    reference = processor(images=image, return_tensors="pt")["pixel_values"]
    ours = path(load_image(image).unsqueeze(0))
    assert ours.shape == reference.shape == (1, 3, 336, 336)
    deviation = (ours - reference).abs() * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255
    assert deviation.max() <= 1.12 * 1.1 and deviation.mean() <= 0.32 * 1.1
    fill = torch.tensor([(c / 255 - m) / s for c, m, s in zip(PAD_COLOUR, CLIP_MEAN, CLIP_STD, strict=True)])
    # Bands of 54 / 55 source rows (x 1.68) or 44 / 45 columns (x 2.24): their outer 80 / 70 clear the kernel.
    bands = (np.s_[..., :80, :], np.s_[..., -80:, :]) if width > height else (np.s_[..., :, :70], np.s_[..., :, -70:])
    for band in bands:
        for values in (ours[band], reference[band]):
            assert torch.allclose(values[0].flatten(1), fill.view(3, 1).float(), atol=1e-6)
    assert (ours[0, :, 168, 168] - fill).abs().max() > 0.05  # the middle is the image, not the pad colour


def test_pad_to_square_by_hand():
    """Mutations caught: the image centred with ceil (or at the top/left), the canvas not filled per
    channel, a square input copied or padded, the batch dimension lost."""
    wide = torch.arange(1, 13, dtype=torch.float32).view(1, 3, 1, 4) / 20  # [1, 3, 1, 4]
    fill = (0.1, 0.2, 0.3)
    out = pad_to_square(wide, fill)
    assert out.shape == (1, 3, 4, 4)
    for channel, colour in enumerate(fill):
        # side 4, top (4 - 1) // 2 = 1: one row of fill above, two below.
        assert torch.equal(out[0, channel, 1], wide[0, channel, 0])
        assert torch.equal(out[0, channel, [0, 2, 3]], torch.full((3, 4), colour))
    tall = torch.rand(2, 3, 3, 2, generator=torch.Generator().manual_seed(0))
    out = pad_to_square(tall, fill)
    assert out.shape == (2, 3, 3, 3)
    assert torch.equal(out[..., :2], tall)  # left (3 - 2) // 2 = 0: the image first, the pad column last
    assert torch.equal(out[:, :, :, 2], torch.tensor(fill).view(1, 3, 1).expand(2, 3, 3))
    square = torch.rand(1, 3, 5, 5)
    assert pad_to_square(square, fill) is square


def test_center_crop_zero_pads_an_image_smaller_than_the_crop():
    """HF's centre crop pads a too-small image with zeros, ceil((crop - size) / 2) before it, then crops.
    Checked by hand and against transformers' numpy center_crop, and through the whole path against a
    LLaVA processor that only crops (the pad normalises to -mean / std). Mutations caught: floor instead
    of ceil, the pads swapped between axes or sides, no padding (a smaller output), cropping before padding."""
    from transformers import LlavaImageProcessorPil
    from transformers.image_transforms import center_crop as hf_center_crop

    pixels = torch.arange(1, 7, dtype=torch.float32).view(1, 1, 3, 2)  # rows [1 2], [3 4], [5 6]
    expected = torch.zeros(1, 1, 6, 5)
    expected[0, 0, 2:5, 2:4] = pixels[0, 0]  # 3 rows of padding: 2 above, 1 below; 3 columns: 2 left, 1 right
    assert torch.equal(center_crop(pixels, 6, 5), expected)
    mixed = torch.arange(20, dtype=torch.float32).view(1, 1, 10, 2)  # taller than the crop, narrower
    expected = torch.zeros(1, 1, 6, 5)
    expected[0, 0, :, 2:4] = mixed[0, 0, 2:8]  # rows cropped from (10 - 6) // 2 = 2, columns padded 2 + 1
    assert torch.equal(center_crop(mixed, 6, 5), expected)
    for tensor, size in ((pixels, (6, 5)), (mixed, (6, 5)), (torch.rand(1, 3, 4, 7), (5, 3))):
        reference = hf_center_crop(tensor[0].numpy(), size, data_format="channels_first")
        assert np.array_equal(center_crop(tensor, *size)[0].numpy(), reference)

    processor = LlavaImageProcessorPil(do_resize=False, crop_size={"height": 7, "width": 6})
    path = ClipStylePreprocessor.from_image_processor(processor)
    assert path.crop_hw == (7, 6) and path.shortest_edge is None and not path.pad_square
    image = smooth_uint8(4, 3, seed=1)  # 4 x 3 x 3 is ambiguous as an array: passed as a PIL image
    reference = processor(images=Image.fromarray(image), return_tensors="pt")["pixel_values"]
    ours = path(load_image(Image.fromarray(image)).unsqueeze(0))
    assert ours.shape == reference.shape == (1, 3, 7, 6)
    assert torch.allclose(ours, reference, atol=1e-5)
    zero = torch.tensor([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)])
    assert torch.allclose(ours[0, :, 0, 0], zero, atol=1e-6) and torch.allclose(ours[0, :, 6, 5], zero, atol=1e-6)
    # ceil(3 / 2) = 2 pad rows above the 4 image rows, ceil(3 / 2) = 2 pad columns left of the 3 image columns.
    expected = (torch.tensor(image).permute(2, 0, 1).float() / 255 - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / (
        torch.tensor(CLIP_STD).view(3, 1, 1)
    )
    assert torch.allclose(ours[0, :, 2:6, 2:5], expected, atol=1e-5)
