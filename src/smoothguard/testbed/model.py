"""The testbed model: a small real ``LlavaForConditionalGeneration`` (CLIP ViT vision tower + Llama
text model, LLaVA-1.5's prompt format and processor) trained from scratch on the testbed scenes.

The shipped checkpoint lives in ``CHECKPOINT_DIR`` and is what ``load_model("testbed")`` loads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from smoothguard.testbed.scenes import IMAGE_SIZE
from smoothguard.testbed.tasks import vocabulary_corpus
from smoothguard.testing import LLAVA_CHAT_TEMPLATE, build_tokenizer

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"
_CHAT_WORDS = ["USER: <image>\n", " ASSISTANT:", "USER:"]


@dataclass(frozen=True)
class ModelSize:
    """Sizes of the testbed model. 64x64 images in 8-pixel patches -> 64 image tokens."""

    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 4
    text_hidden: int = 192
    text_layers: int = 4
    heads: int = 4


def build_processor():
    """The LLaVA processor of the testbed: CLIP image processor at 64 px, word-sized BPE tokens."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    tokenizer = build_tokenizer(
        ["<image>"], vocab_size=1000, chat_template=LLAVA_CHAT_TEMPLATE, corpus=[*_CHAT_WORDS, *vocabulary_corpus()]
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=ModelSize.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def build_model(processor, shape: ModelSize = ModelSize(), seed: int = 0):
    """A freshly initialised testbed ``LlavaForConditionalGeneration`` for ``processor``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden,
        intermediate_size=2 * shape.vision_hidden,
        num_hidden_layers=shape.vision_layers,
        num_attention_heads=shape.heads,
        image_size=IMAGE_SIZE,
        patch_size=shape.patch_size,
        projection_dim=shape.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.text_hidden,
        intermediate_size=2 * shape.text_hidden,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // shape.patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.testbed_shape = asdict(shape)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
