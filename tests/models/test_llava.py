"""The LLaVA adapter and load_model on a tiny random LlavaForConditionalGeneration."""

import numpy as np
import pytest
import torch
from PIL import Image

from smoothguard import ModelLoadError, UnsupportedError, load_model
from smoothguard.inputs import load_image
from smoothguard.models import LlavaAdapter
from smoothguard.models.image import TEXT_KEYS, to_uint8_image


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3] natural-looking image: random colours bilinearly upsampled."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((max(height // 8, 2), max(width // 8, 2), 3)) * 255).astype(np.uint8))
    return np.asarray(small.resize((width, height), Image.BILINEAR))


def test_load_model_picks_llava_adapter(tiny_llava):
    assert isinstance(tiny_llava, LlavaAdapter)
    assert tiny_llava.family == "llava"
    assert tiny_llava.noise_spaces == ("normalized", "pixel")
    assert tiny_llava.describe()["dtype"] == "float32"


@pytest.mark.parametrize(("height", "width"), [(60, 80), (32, 32), (200, 120), (17, 45), (512, 384)])
def test_pixel_path_matches_processor(tiny_llava, height, width):
    image = smooth_image(height, width)
    reference = tiny_llava.processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    ours = tiny_llava.preprocess(load_image(image).unsqueeze(0))["pixel_values"]
    assert ours.shape == reference.shape
    difference = (ours - reference).abs()
    # The processor resizes in 8 bits; we do not: ~1/255 pixel units, /std ~ 0.015 normalised.
    assert difference.mean() < 0.01
    assert difference.max() < 0.06


@pytest.mark.parametrize(("height", "width"), [(60, 80), (200, 120), (17, 45), (25, 30), (97, 123)])
def test_pixel_path_follows_pil_on_noise(tiny_llava, height, width):
    # Bicubic overshoots past 0 and 1 on noise; PIL clamps to 8 bits after each 1-D pass (width first)
    # and so do we, which leaves only PIL's rounding: under 1.5/255 pixel units everywhere.
    image = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    reference = tiny_llava.processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    ours = tiny_llava.preprocess(load_image(image).unsqueeze(0))["pixel_values"]
    std = torch.tensor(tiny_llava.mean_std[1]).view(1, -1, 1, 1)
    assert ((ours - reference).abs() * std * 255).max() < 1.5


def test_pixel_path_is_differentiable(tiny_llava):
    pixels = torch.rand(2, 3, 40, 50, requires_grad=True)
    tiny_llava.preprocess(pixels)["pixel_values"].square().sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_prompt_uses_chat_template_with_image_tokens(tiny_llava):
    text = tiny_llava.prompt_text("What is it?", torch.rand(3, 40, 40))
    ids = text["input_ids"][0].tolist()
    image_id = tiny_llava.model.config.image_token_index
    assert ids.count(image_id) == tiny_llava.model.config.image_seq_length
    decoded = tiny_llava.tokenizer.decode([i for i in ids if i != image_id])
    assert decoded.startswith("USER: ") and decoded.endswith("What is it? ASSISTANT:")


def test_batched_generate_equals_one_by_one(tiny_llava):
    queries = [
        tiny_llava.encode(p, torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(i)))
        for i, p in enumerate(["Hi", "Describe the scene in great detail, every object.", "Count."])
    ]
    batched = tiny_llava.generate(queries, max_new_tokens=8)
    single = [tiny_llava.generate([q], max_new_tokens=8)[0] for q in queries]
    assert batched == single


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError):
        load_model(tmp_path)


def test_unknown_hub_id_fails_fast_offline():
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        load_model("no-such-org/no-such-model")


def test_text_only_model_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from smoothguard.models.build import build_tokenizer

    config = LlamaConfig(
        vocab_size=300,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    build_tokenizer([]).save_pretrained(tmp_path)
    with pytest.raises((ModelLoadError, UnsupportedError)):
        load_model(tmp_path)


def test_bad_device_and_dtype(tiny_llava_dir):
    from smoothguard import ConfigError

    with pytest.raises(ConfigError):
        load_model(tiny_llava_dir, dtype="float8")
    with pytest.raises(ConfigError):
        load_model(tiny_llava_dir, device="tpu:0")


# Square, wide, tall, tiny, large, odd: LLaVA's centre crop gives every size the same token count.
SIZES = [(32, 32), (40, 200), (300, 50), (3, 5), (1024, 768), (97, 123)]


PROMPTS = [
    "Hi",
    "Describe the scene in great detail, every object, its colour and where it is. " * 12,
    "Что на картинке? 猫か犬か 🐱 café — naïve “quotes”",
    "<image>\nWhat is it?",
]


def processor_text(adapter, prompt: str, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference: the HF processor on the full image (what ``prompt_text`` used to run)."""
    text = adapter.chat_prompt(adapter.checked_prompt(prompt))
    encoded = adapter.processor(text=text, images=to_uint8_image(image), return_tensors="pt")
    return {key: encoded[key] for key in TEXT_KEYS if key in encoded}


@pytest.mark.parametrize(("height", "width"), SIZES, ids=["square", "wide", "tall", "tiny", "large", "odd"])
@pytest.mark.parametrize("prompt", PROMPTS, ids=["short", "long", "unicode", "leading-image"])
def test_prompt_text_equals_the_processor(tiny_llava, height, width, prompt):
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(height * width))
    ours, expected = tiny_llava.prompt_text(prompt, image), processor_text(tiny_llava, prompt, image)
    assert set(ours) == set(expected) == {"input_ids", "attention_mask"}
    for key, value in expected.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


def test_prompt_text_runs_no_processor_and_tokenises_each_prompt_once(tiny_llava, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the HF processor was run")

    monkeypatch.setattr(type(tiny_llava.processor), "__call__", refuse)
    monkeypatch.setattr(tiny_llava.processor.image_processor, "preprocess", refuse)
    tiny_llava.prompt_ids.cache_clear()
    texts = [tiny_llava.prompt_text("Count.", torch.rand(3, 20 + i, 30)) for i in range(3)]
    assert tiny_llava.prompt_ids.cache_info().misses == 1 and tiny_llava.prompt_ids.cache_info().hits == 2
    assert all(torch.equal(text["input_ids"], texts[0]["input_ids"]) for text in texts)
    texts[0]["input_ids"][0, 0] = -1  # callers own their tensors: the cache is not changed through them
    assert tiny_llava.prompt_text("Count.", torch.rand(3, 20, 30))["input_ids"][0, 0] != -1
    assert torch.equal(
        tiny_llava.prompt_text("<image> Count.", torch.rand(3, 8, 8))["input_ids"], texts[1]["input_ids"]
    )


def test_bad_prompts_are_still_refused_on_every_call(tiny_llava):
    from smoothguard import InputError

    for _ in range(2):
        with pytest.raises(InputError, match="special token"):
            tiny_llava.prompt_text("What is <image> here?", torch.rand(3, 8, 8))


def test_other_processors_keep_the_processor_path(tiny_llava):
    from transformers import LlavaProcessor

    from smoothguard.models.llava import expands_like_llava

    class OwnExpansion(LlavaProcessor):
        def replace_image_token(self, image_inputs, image_idx, **kwargs):
            return self.image_token * 3

    assert expands_like_llava(tiny_llava.processor)
    processor = tiny_llava.processor
    own = OwnExpansion(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        patch_size=processor.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=processor.chat_template,
    )
    assert not expands_like_llava(own)
    adapter = LlavaAdapter(tiny_llava.model, own, "own-expansion")
    assert adapter.image_token_count(32, 32) is None
    ids = adapter.prompt_text("Hi", torch.rand(3, 32, 32))["input_ids"][0].tolist()
    assert ids.count(tiny_llava.model.config.image_token_index) == 3
