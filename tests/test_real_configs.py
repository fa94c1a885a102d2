"""The adapters on the real processor, tokenizer and chat-template files of LLaVA-1.5-7B and Qwen2-VL-2B
(``../shared/fixtures/model-configs``: shrunk model configs, random weights, saved to a temporary folder
and loaded with ``load_model(folder)``). Skipped where the fixtures are absent. (The early Qwen2.5-VL
preprocessor config is tested in test_qwen_vl.py: it needs no fixture.)

Checked against the real files: the prompt equals the real chat template's output, ``input_ids`` (the
expanded image tokens included) equal the HF processor's, and the differentiable preprocessing stays
within the bound the README states (in 1/255 pixel units: normalised difference x std x 255).
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from smoothguard import load_model
from smoothguard.inputs import load_image
from smoothguard.models import LlavaAdapter
from smoothguard.models.qwen_vl import QwenVLAdapter
from support.common import needs_reference
from support.real_models import FIXTURES, save_real_llava, save_real_qwen2_vl

pytestmark = needs_reference(FIXTURES, "the real model config files of ../shared")


PROMPTS = (
    "What is in the image?",
    "Is there a dog? Answer yes or no.",
    "Describe   it:\n  colours, shapes & <b>text</b>.",
)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: random colours bilinearly upsampled (photo-like)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((max(height // 16, 2), max(width // 16, 2), 3)) * 255).astype(np.uint8))
    return np.asarray(small.resize((width, height), Image.BILINEAR))


def perturbed_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: a smooth image plus a random +-16/255 sign pattern (what an L-inf attack leaves)."""
    signs = np.random.default_rng(seed + 1000).choice([-16, 16], (height, width, 3))
    return np.clip(smooth_image(height, width, seed).astype(int) + signs, 0, 255).astype(np.uint8)


def noisy_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: independent uniform pixels (the worst case for resampling)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def edge_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3]: saturated blocks with hard edges (bicubic overshoots past 0 and 255 there)."""
    rng = np.random.default_rng(seed)
    blocks = (rng.random((max(height // 12, 2), max(width // 12, 2), 3)) > 0.5).astype(np.uint8) * 255
    return np.asarray(Image.fromarray(blocks).resize((width, height), Image.NEAREST))


KINDS = {"smooth": smooth_image, "perturbed": perturbed_image, "noisy": noisy_image, "edges": edge_image}


# (height, width): upscaled, exact for LLaVA, landscape, portrait, panorama, odd, tiny, large.
SIZES = ((60, 80), (336, 336), (480, 640), (640, 360), (200, 700), (123, 97), (17, 45), (1024, 768))


IMAGES = [(kind, size) for kind in KINDS for size in SIZES]


# |ours - HF processor (PIL backend)| in 1/255 pixel units (normalised difference x std x 255), as
# measured on IMAGES with seeds 0-2 and stated in the README ("Preprocessing: one path for defense and
# attacks"): (max over all values, largest per-image mean, largest per-image share of values above
# 1.5/255). Qwen-VL's outliers come from sizes for which this Pillow runs its height pass first (the
# height shrinks while the width grows, e.g. 480x640 -> 476x644); our resize runs Pillow's published
# order, width first. Asserted with a small margin.
BOUNDS = {
    ("llava", "smooth"): (1.12, 0.32, 0.0),
    ("llava", "perturbed"): (1.12, 0.32, 0.0),
    ("llava", "noisy"): (1.12, 0.32, 0.0),
    ("llava", "edges"): (1.12, 0.06, 0.0),
    ("qwen_vl", "smooth"): (1.11, 0.32, 0.0),
    ("qwen_vl", "perturbed"): (3.95, 0.32, 0.002),
    ("qwen_vl", "noisy"): (23.0, 0.43, 0.024),
    ("qwen_vl", "edges"): (16.9, 0.07, 0.007),
}


MARGIN = 1.1


def make_image(kind: str, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    return KINDS[kind](*size, seed=seed)


def deviation_255(adapter, image: np.ndarray) -> torch.Tensor:
    """|adapter.preprocess - HF image processor| for one uint8 image, per value, in 1/255 pixel units."""
    reference = adapter.processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    ours = adapter.preprocess(load_image(image).unsqueeze(0))["pixel_values"]
    assert ours.shape == reference.shape
    std = torch.tensor(adapter.mean_std[1])
    deviation = (ours - reference).abs()
    if deviation.dim() == 4:  # LLaVA: [1, 3, S, S]
        return deviation * std.view(1, -1, 1, 1) * 255
    # Qwen-VL: [P, 3 * T * ps * ps], channel-major within a row.
    return deviation.view(deviation.shape[0], 3, -1) * std.view(1, -1, 1) * 255


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory) -> LlavaAdapter:
    return load_model(save_real_llava(tmp_path_factory.mktemp("real-llava")), device="cpu")


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory: pytest.TempPathFactory) -> QwenVLAdapter:
    return load_model(save_real_qwen2_vl(tmp_path_factory.mktemp("real-qwen2-vl")), device="cpu")


@pytest.fixture(scope="module", params=["llava", "qwen_vl"])
def adapter(request: pytest.FixtureRequest):
    return request.getfixturevalue({"llava": "llava", "qwen_vl": "qwen2_vl"}[request.param])


def real_chat_template(adapter) -> str:
    folder = {"llava": "llava-1.5-7b-hf", "qwen_vl": "Qwen2-VL-2B-Instruct"}[adapter.family]
    return json.loads((FIXTURES / folder / "chat_template.json").read_text())["chat_template"]


# The prompts the model cards document, for one image and one user turn.
def documented_prompt(family: str, prompt: str) -> str:
    if family == "llava":
        return f"USER: <image>\n{prompt} ASSISTANT:"
    return (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_load_model_reads_the_real_files(llava: LlavaAdapter, qwen2_vl: QwenVLAdapter) -> None:
    assert isinstance(llava, LlavaAdapter) and type(llava.processor).__name__ == "LlavaProcessor"
    assert (llava.pixel_path.shortest_edge, llava.pixel_path.crop_hw) == (336, (336, 336))
    assert llava.tokenizer.convert_tokens_to_ids("<image>") == llava.model.config.image_token_index == 32000
    assert len(llava.tokenizer) == 32002
    assert isinstance(qwen2_vl, QwenVLAdapter) and type(qwen2_vl.processor).__name__ == "Qwen2VLProcessor"
    assert (qwen2_vl.pixel_path.min_pixels, qwen2_vl.pixel_path.max_pixels) == (3136, 12845056)
    assert qwen2_vl.processor.image_token_id == qwen2_vl.model.config.image_token_id == 151655
    assert len(qwen2_vl.tokenizer) == 151657
    for adapter in (llava, qwen2_vl):
        assert adapter.mean_std == ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
        assert adapter.processor.chat_template == real_chat_template(adapter)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_equals_the_real_chat_template(adapter, prompt: str) -> None:
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    rendered = adapter.tokenizer.apply_chat_template(
        conversation, chat_template=real_chat_template(adapter), add_generation_prompt=True, tokenize=False
    )
    assert adapter.chat_prompt(prompt) == rendered == documented_prompt(adapter.family, prompt)


def expected_input_ids(adapter, prompt: str, image: np.ndarray) -> list[int]:
    """The chat prompt with its one image placeholder repeated once per image token, tokenised: what
    LLaVA's processor (576 tokens at 336 px / 14 px) and Qwen2-VL's (one per 2x2 merged patches of the
    processor's grid) do."""
    if adapter.family == "llava":
        placeholder, count = "<image>", (336 // 14) ** 2
    else:
        grid = adapter.processor.image_processor(images=image, return_tensors="pt")["image_grid_thw"][0]
        placeholder, count = "<|image_pad|>", int(grid.prod()) // 4
    text = documented_prompt(adapter.family, prompt).replace(placeholder, placeholder * count)
    return adapter.tokenizer(text)["input_ids"]


# Besides PROMPTS: long, unicode, and led by the family's image placeholder (which checked_prompt drops).
EXPANSION_PROMPTS = (
    *PROMPTS,
    "Describe the scene in great detail, every object, its colour and where it is. " * 12,
    "Что на картинке? 猫か犬か 🐱 café — naïve “quotes”",
)


LEADING_PLACEHOLDER = {"llava": "<image>\n", "qwen_vl": "<|image_pad|>"}


# (height, width): upscaled, exact for LLaVA, landscape, portrait, panorama, tiny, large, odd.
@pytest.mark.parametrize(
    "size", [(60, 80), (336, 336), (480, 640), (640, 360), (200, 700), (17, 45), (1024, 768), (123, 97)], ids=str
)
def test_token_expansion_equals_the_processor(adapter, size: tuple[int, int]) -> None:
    # prompt_text counts the image tokens from the size (no processor run); the processor expands the
    # placeholder itself on the full image: input_ids, attention_mask and mm_token_type_ids are equal.
    image = make_image("smooth", size)
    for prompt in EXPANSION_PROMPTS:
        text = adapter.prompt_text(prompt, load_image(image))
        ids = text["input_ids"][0].tolist()
        processor = adapter.processor(text=documented_prompt(adapter.family, prompt), images=image, return_tensors="pt")
        assert ids == processor["input_ids"][0].tolist() == expected_input_ids(adapter, prompt, image)
        keys = {"input_ids", "attention_mask"} | ({"mm_token_type_ids"} if adapter.family == "qwen_vl" else set())
        assert set(text) == keys
        for key in keys:
            assert text[key].dtype == processor[key].dtype and torch.equal(text[key], processor[key]), key
        assert text["attention_mask"].bool().all()
        if adapter.family == "qwen_vl":
            is_image = text["input_ids"][0] == adapter.processor.image_token_id
            assert torch.equal(text["mm_token_type_ids"][0].bool(), is_image)
        led = adapter.prompt_text(LEADING_PLACEHOLDER[adapter.family] + prompt, load_image(image))
        assert torch.equal(led["input_ids"], text["input_ids"])


@pytest.mark.parametrize(("kind", "size"), IMAGES, ids=[f"{kind}-{h}x{w}" for kind, (h, w) in IMAGES])
def test_preprocessing_within_the_documented_bound(adapter, kind: str, size: tuple[int, int]) -> None:
    deviation = deviation_255(adapter, make_image(kind, size))
    largest, mean, share = BOUNDS[adapter.family, kind]
    assert deviation.max() <= largest * MARGIN
    assert deviation.mean() <= mean * MARGIN
    assert (deviation > 1.5).float().mean() <= share * MARGIN
    if size == (336, 336):  # no resize for either family: exact
        assert deviation.max() < 1e-3


def test_generate_runs_on_the_real_files(adapter) -> None:
    queries = [
        adapter.encode(prompt, load_image(make_image("smooth", (56, 84), seed))) for seed, prompt in enumerate(PROMPTS)
    ]
    answers = adapter.generate(queries, max_new_tokens=3)
    assert len(answers) == 3 and all(isinstance(answer, str) for answer in answers)
    assert adapter.generate(queries[:1], max_new_tokens=3) == answers[:1]
