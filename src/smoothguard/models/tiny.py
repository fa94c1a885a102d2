"""Tiny random-initialised models of each family, for tests, benchmarks and examples.

Each saver builds a real HuggingFace model of the family (``smoothguard.models.build``: random weights,
a tokenizer trained on the spot, the family's processor and chat template) and saves it with
``save_pretrained``, so that ``load_model(folder)`` exercises exactly the ``from_pretrained`` path a hub
id takes. ``python -m smoothguard.models.tiny FAMILY FOLDER`` saves one from the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from smoothguard.models.build import (
    LLAVA_CHAT_TEMPLATE,
    QWEN2_AUDIO_CHAT_TEMPLATE,
    QWEN_VL_CHAT_TEMPLATE,
    build_tokenizer,
    llava_processor,
    random_llava,
)


def save_tiny_llava(
    folder: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a random ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama text model) with
    a ``LlavaProcessor`` (CLIP image processor: resize shortest edge, centre crop, CLIP mean/std).

    ``image_size`` / ``patch_size`` set the number of image tokens, ``(image_size/patch_size)**2``
    (LLaVA-1.5-7B: 336 / 14 -> 576). Returns the folder.
    """
    folder = Path(folder)
    tokenizer = build_tokenizer(["<image>"], chat_template=LLAVA_CHAT_TEMPLATE)
    model = random_llava(
        tokenizer,
        image_size=image_size,
        patch_size=patch_size,
        vision_hidden=hidden_size,
        vision_layers=num_layers,
        text_hidden=hidden_size,
        text_layers=num_layers,
        seed=seed,
    )
    model.save_pretrained(folder)
    llava_processor(tokenizer, image_size=image_size, patch_size=patch_size).save_pretrained(folder)
    return folder


def save_tiny_qwen2_audio(
    folder: str | Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 1,
    seed: int = 0,
) -> Path:
    """Save a random ``Qwen2AudioForConditionalGeneration`` (Whisper-style audio encoder, 128 mel
    bins, 1500 positions = 30 s, + Qwen2 text model) with a ``Qwen2AudioProcessor``
    (``WhisperFeatureExtractor(feature_size=128)``, 16 kHz, and the Instruct chat template).

    The clip-length -> token-count arithmetic is the real model's: one ``<|AUDIO|>`` per 40 ms.
    Returns the folder.
    """
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    folder = Path(folder)
    tokenizer = build_tokenizer(
        ["<|im_start|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"],
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN2_AUDIO_CHAT_TEMPLATE,
    )
    audio = Qwen2AudioEncoderConfig(
        d_model=hidden_size,
        encoder_layers=num_layers,
        encoder_attention_heads=2,
        encoder_ffn_dim=2 * hidden_size,
        num_mel_bins=128,
        max_source_positions=1500,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = Qwen2AudioConfig(
        audio_config=audio,
        text_config=text,
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tokenizer,
        chat_template=QWEN2_AUDIO_CHAT_TEMPLATE,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_qwen_vl(
    folder: str | Path,
    *,
    version: str = "2",
    patch_size: int = 14,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 16,
    hidden_size: int = 64,
    num_layers: int = 2,
    seed: int = 0,
) -> Path:
    """Save a random ``Qwen2VLForConditionalGeneration`` (``version="2"``) or
    ``Qwen2_5_VLForConditionalGeneration`` (``"2.5"``, windowed attention in all but the last vision
    layer) with an image-only processor (``Qwen2VLImageProcessor``, merge size 2, temporal patch 2,
    CLIP mean/std; no video processor, which transformers 5.x builds only with torchvision).

    An image is resized to ``min_pixels <= h * w <= max_pixels`` (multiples of ``2 * patch_size``)
    and gives ``h * w / (2 * patch_size)**2`` image tokens: 4 to 16 with the defaults. Returns the folder.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
        Qwen2VLProcessor,
    )

    from smoothguard.models.qwen_vl import image_only_processor_class

    if version not in ("2", "2.5"):
        raise ValueError(f"version must be '2' or '2.5', got {version!r}")
    folder = Path(folder)
    tokenizer = build_tokenizer(
        ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=QWEN_VL_CHAT_TEMPLATE,
    )
    head_dim = hidden_size // 2
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        # M-RoPE splits the head_dim / 2 rotary frequencies into (temporal, height, width) sections.
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16],
        },
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
    }
    vision = {
        "depth": num_layers,
        "num_heads": 2,
        "patch_size": patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    token_ids = {
        f"{name}_token_id": tokenizer.convert_tokens_to_ids(f"<|{name}|>") for name in ("vision_start", "vision_end")
    }
    token_ids.update(
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
    )
    if version == "2":
        vision.update(embed_dim=hidden_size // 2, hidden_size=hidden_size, mlp_ratio=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **token_ids)
        model_class, processor_class = Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    else:
        vision.update(
            hidden_size=hidden_size // 2,
            intermediate_size=hidden_size,
            out_hidden_size=hidden_size,
            window_size=4 * patch_size,
            fullatt_block_indexes=[num_layers - 1],
        )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **token_ids)
        model_class, processor_class = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, patch_size=patch_size
    )
    processor = image_only_processor_class(processor_class)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_VL_CHAT_TEMPLATE
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


BUILDERS = {
    "llava": save_tiny_llava,
    "qwen2-vl": lambda folder: save_tiny_qwen_vl(folder, version="2"),
    "qwen2.5-vl": lambda folder: save_tiny_qwen_vl(folder, version="2.5"),
    "qwen2-audio": save_tiny_qwen2_audio,
}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m smoothguard.models.tiny FAMILY FOLDER``: save a tiny random model of FAMILY."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m smoothguard.models.tiny", description=main.__doc__)
    parser.add_argument("family", choices=sorted(BUILDERS))
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    print(BUILDERS[args.family](args.folder))


if __name__ == "__main__":
    main()
