"""Qwen2-VL / Qwen2.5-VL adapter on tiny random models: differentiable preprocessing vs the HF
processor, prompt expansion, left-padded batched greedy generation, and per-copy media slicing."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from smoothguard import InputError, ModelLoadError
from smoothguard.models.auto import load_model
from smoothguard.models.image import TEXT_KEYS, to_uint8_image
from smoothguard.models.qwen_vl import QwenVLAdapter
from smoothguard.models.tiny import save_tiny_qwen_vl

MODEL_CLASSES = {"2": "Qwen2VLForConditionalGeneration", "2.5": "Qwen2_5_VLForConditionalGeneration"}


PROCESSOR_CLASSES = {"2": "Qwen2VLProcessor", "2.5": "Qwen2_5_VLProcessor"}


# One 8-bit level in normalised units is 1 / 255 / std ~ 0.015 (CLIP std ~ 0.26).
ONE_LEVEL = 1 / 255 / 0.26


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth photo-like image [3, height, width], quantised to 8 bits like a loaded file."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 8 + 2, width // 8 + 2, generator=generator)
    image = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    return (image * 255).round() / 255


def processor_images(adapter: QwenVLAdapter, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return adapter.processor.image_processor(images=[to_uint8_image(i) for i in images], return_tensors="pt")


@pytest.fixture(scope="module", params=["2", "2.5"])
def version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def adapter(version: str, tmp_path_factory: pytest.TempPathFactory) -> QwenVLAdapter:
    folder = save_tiny_qwen_vl(tmp_path_factory.mktemp(f"tiny_qwen{version}_vl"), version=version)
    return load_model(folder, device="cpu")


def test_load_model_picks_the_qwen_vl_adapter(adapter: QwenVLAdapter, version: str) -> None:
    assert isinstance(adapter, QwenVLAdapter)
    assert (adapter.family, adapter.modality, adapter.noise_spaces) == ("qwen_vl", "image", ("normalized", "pixel"))
    assert type(adapter.model).__name__ == MODEL_CLASSES[version]
    # Built without a video processor (none can be made without torchvision), under the HF name.
    assert type(adapter.processor).__name__ == PROCESSOR_CLASSES[version]
    assert adapter.mean_std == (
        tuple(adapter.processor.image_processor.image_mean),
        tuple(adapter.processor.image_processor.image_std),
    )


@pytest.mark.parametrize(
    ("height", "width"),
    [(56, 56), (100, 80), (123, 97), (20, 30), (300, 50), (50, 300), (400, 400)],
    ids=["exact", "rounded", "odd", "upscaled", "tall", "wide", "downscaled"],
)
def test_preprocess_matches_the_processor(adapter: QwenVLAdapter, height: int, width: int) -> None:
    images = [smooth_image(height, width, seed=1), smooth_image(height, width, seed=2)]
    expected = processor_images(adapter, images)
    ours = adapter.preprocess(torch.stack(images))
    assert ours["image_grid_thw"].dtype == expected["image_grid_thw"].dtype
    assert torch.equal(ours["image_grid_thw"], expected["image_grid_thw"])
    assert ours["pixel_values"].shape == expected["pixel_values"].shape
    deviation = (ours["pixel_values"] - expected["pixel_values"]).abs()
    # Bicubic in float vs PIL's 8-bit output: at most about one 8-bit level apart.
    assert deviation.max() < 1.5 * ONE_LEVEL and deviation.mean() < 0.5 * ONE_LEVEL
    if (height, width) == (56, 56):  # already a multiple of the factor: no resize, exact
        assert deviation.max() < 1e-5


def test_preprocess_is_close_on_high_frequency_images(adapter: QwenVLAdapter) -> None:
    # PIL clips to 8 bits between its horizontal and vertical passes, so bicubic overshoot on
    # pixel noise differs at a few pixels; on average the two stay within a fraction of a level.
    image = (torch.rand(3, 123, 97, generator=torch.Generator().manual_seed(0)) * 255).round() / 255
    expected = processor_images(adapter, [image])
    deviation = (adapter.preprocess(image[None])["pixel_values"] - expected["pixel_values"]).abs()
    assert deviation.mean() < 0.5 * ONE_LEVEL
    assert (deviation > 1.5 * ONE_LEVEL).float().mean() < 0.01


def test_gradients_reach_the_pixels(adapter: QwenVLAdapter) -> None:
    pixels = smooth_image(90, 70)[None].requires_grad_(True)
    text = adapter.prompt_text("What is in the image?", pixels[0].detach())
    logits = adapter.model(**text, **adapter.preprocess(pixels)).logits
    logits[0, -1].logsumexp(-1).backward()
    assert pixels.grad is not None and pixels.grad.shape == pixels.shape
    assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0


def test_prompt_text_expands_the_image_placeholder(adapter: QwenVLAdapter) -> None:
    image = smooth_image(100, 80)
    text = adapter.prompt_text("What is in the image?", image)
    assert set(text) == {"input_ids", "attention_mask", "mm_token_type_ids"}
    assert all(value.shape == text["input_ids"].shape and value.shape[0] == 1 for value in text.values())
    grid = adapter.preprocess(image[None])["image_grid_thw"][0]
    image_token = adapter.processor.image_token_id
    is_image = text["input_ids"][0] == image_token
    assert int(is_image.sum()) == int(grid.prod()) // 4  # 2x2 patches merge into one token
    assert torch.equal(text["mm_token_type_ids"][0].bool(), is_image)
    decoded = adapter.tokenizer.decode(text["input_ids"][0])
    assert "<|im_start|>user\n<|vision_start|><|image_pad|>" in decoded
    assert decoded.endswith("What is in the image?<|im_end|>\n<|im_start|>assistant\n")


def test_generate_returns_one_string_per_query(adapter: QwenVLAdapter) -> None:
    answers = adapter.generate([adapter.encode("What is in the image?", smooth_image(64, 64))], max_new_tokens=4)
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_batched_generation_with_left_padding_equals_one_by_one(adapter: QwenVLAdapter) -> None:
    # Different prompt lengths AND image sizes, so rows are left-padded and the 3-D rotary
    # positions of each row must skip its padding.
    queries = [
        adapter.encode("What is in the image?", smooth_image(64, 64, seed=3)),
        adapter.encode(
            "Describe the scene in detail: a blue square, a green circle and a yellow triangle.",
            smooth_image(90, 150, seed=4),
        ),
        adapter.encode("Yes?", smooth_image(200, 40, seed=5)),
    ]
    assert len({q.text["input_ids"].shape[1] for q in queries}) == 3
    one_by_one = [adapter.generate([q], max_new_tokens=8)[0] for q in queries]
    assert adapter.generate(queries, max_new_tokens=8) == one_by_one


def test_split_media_round_trips(adapter: QwenVLAdapter) -> None:
    images = torch.stack([smooth_image(100, 80, seed=s) for s in range(3)])
    media = adapter.preprocess(images)
    slices = adapter.split_media(media, 3)
    for key in media:
        assert torch.equal(torch.cat([s[key] for s in slices]), media[key])
    for image, piece in zip(images, slices, strict=True):
        single = adapter.preprocess(image[None])
        assert piece["image_grid_thw"].shape == (1, 3)
        assert torch.allclose(piece["pixel_values"], single["pixel_values"], atol=1e-6)


# The preprocessor_config.json of the first Qwen/Qwen2.5-VL-*-Instruct uploads: it names a class that
# transformers 5 does not have (Qwen2_5_VLImageProcessor; both versions use Qwen2VLImageProcessor).
EARLY_QWEN2_5_VL_PREPROCESSOR = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2_5_VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}


def early_checkpoint(folder: Path, image_processor_type: str) -> Path:
    """A tiny Qwen2.5-VL saved as the early hub checkpoints were: the image processor settings in
    ``preprocessor_config.json`` (no ``processor_config.json``, whose nested settings would win)."""
    save_tiny_qwen_vl(folder, version="2.5")
    (folder / "processor_config.json").unlink()
    settings = {**EARLY_QWEN2_5_VL_PREPROCESSOR, "image_processor_type": image_processor_type}
    (folder / "preprocessor_config.json").write_text(json.dumps(settings, indent=2))
    return folder


def folder_digest(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("image_processor_type", ["Qwen2_5_VLImageProcessor", "Qwen2_5_VLImageProcessorFast"])
def test_early_qwen2_5_vl_preprocessor_config_loads(tmp_path: Path, image_processor_type: str) -> None:
    folder = early_checkpoint(tmp_path / "early", image_processor_type)
    before = folder_digest(folder)
    adapter = load_model(folder, device="cpu")
    assert folder_digest(folder) == before  # the class name is mapped in memory, never in the folder
    assert type(adapter.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(adapter.processor).__name__ == "Qwen2_5_VLProcessor"
    image_processor = adapter.processor.image_processor
    assert type(image_processor).__name__ in ("Qwen2VLImageProcessorPil", "Qwen2VLImageProcessor")
    # The early file's settings, not the defaults.
    assert (adapter.pixel_path.min_pixels, adapter.pixel_path.max_pixels) == (3136, 12845056)
    assert adapter.pixel_path.mean == tuple(EARLY_QWEN2_5_VL_PREPROCESSOR["image_mean"])
    image = smooth_image(100, 80)
    expected = processor_images(adapter, [image])
    ours = adapter.preprocess(image[None])
    assert torch.equal(ours["image_grid_thw"], expected["image_grid_thw"])
    assert (ours["pixel_values"] - expected["pixel_values"]).abs().max() < 1.5 * ONE_LEVEL
    text = adapter.prompt_text("What is in the image?", image)
    assert (
        int((text["input_ids"][0] == adapter.processor.image_token_id).sum())
        == int(expected["image_grid_thw"].prod()) // 4
    )
    assert len(adapter.generate([adapter.encode("What is in the image?", image)], max_new_tokens=2)) == 1


def test_an_unknown_image_processor_class_still_fails_clearly(tmp_path: Path) -> None:
    folder = early_checkpoint(tmp_path / "unknown", "NoSuchImageProcessor")
    with pytest.raises(ModelLoadError, match="cannot load qwen2_5_vl model"):
        load_model(folder, device="cpu")


# Square, wide, tall, tiny (upscaled to min_pixels), large (downscaled to max_pixels), odd.
SIZES = [(56, 56), (60, 250), (250, 60), (5, 7), (1024, 768), (123, 97)]


PROMPTS = [
    "Hi",
    "Describe the scene in great detail, every object, its colour and where it is. " * 12,
    "Что на картинке? 猫か犬か 🐱 café — naïve “quotes”",
    "<|image_pad|>\nWhat is in the image?",  # Qwen-VL's placeholder, dropped by checked_prompt
    "<image>\nWhat is in the image?",  # LLaVA's, plain text for Qwen-VL
]


def processor_text(adapter: QwenVLAdapter, prompt: str, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference: the HF processor on the full image (what ``prompt_text`` used to run)."""
    text = adapter.chat_prompt(adapter.checked_prompt(prompt))
    encoded = adapter.processor(text=text, images=to_uint8_image(image), return_tensors="pt")
    return {key: encoded[key] for key in TEXT_KEYS if key in encoded}


@pytest.mark.parametrize(("height", "width"), SIZES, ids=["square", "wide", "tall", "tiny", "large", "odd"])
def test_prompt_text_equals_the_processor(adapter: QwenVLAdapter, height: int, width: int) -> None:
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(height * width))
    for prompt in PROMPTS:
        ours, expected = adapter.prompt_text(prompt, image), processor_text(adapter, prompt, image)
        assert set(ours) == set(expected) == {"input_ids", "attention_mask", "mm_token_type_ids"}
        for key, value in expected.items():
            assert ours[key].shape == value.shape and ours[key].shape[0] == 1, key
            assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), (prompt, key)
        assert int(ours["mm_token_type_ids"].sum()) == adapter.image_token_count(height, width)


def test_prompt_text_runs_no_processor(adapter: QwenVLAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the HF processor was run")

    monkeypatch.setattr(type(adapter.processor), "__call__", refuse)
    monkeypatch.setattr(adapter.processor.image_processor, "preprocess", refuse)
    adapter.prompt_ids.cache_clear()
    for size in SIZES:
        adapter.prompt_text("What is in the image?", smooth_image(*size))
    assert adapter.prompt_ids.cache_info().misses == 1


def test_prompt_text_refuses_an_extreme_aspect_ratio(adapter: QwenVLAdapter) -> None:
    with pytest.raises(InputError, match="aspect ratio"):
        adapter.prompt_text("What is in the image?", torch.rand(3, 2, 500))
