"""SmoothGuard's cost at real model sizes on a GPU: random-initialised models with the exact shapes of
LLaVA-1.5-7B and Qwen2.5-VL-7B-Instruct, in bf16, built in memory (no download, no disk), through the
same arms as ``bench_guard_latency.py`` (generation stage batched and one call per copy, end to end with
the share of every stage). Prints the card, driver and CUDA version with every figure.

    python benchmarks/bench_gpu.py                                  # both shapes, 128 new tokens
    python benchmarks/bench_gpu.py --shape llava-1.5-7b --repeats 3 --json
    python benchmarks/bench_gpu.py --shape tiny --device cpu        # checks that the script runs
    python benchmarks/bench_gpu.py --shape tiny-qwen --device cpu

Random weights never stop early, so every answer is forced to ``--new-tokens`` tokens (equal work per
arm). The physical floor to compare with: at 128 new tokens the 11-row decode is memory-bound (about
1.2x one row), the prefill of 11 images compute-bound.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from typing import Any

import torch
import transformers

from bench_guard_latency import measure, report
from smoothguard.models.build import (
    LLAVA_CHAT_TEMPLATE,
    QWEN_VL_CHAT_TEMPLATE,
    build_tokenizer,
    llava_processor,
)
from smoothguard.models.llava import LlavaAdapter
from smoothguard.models.qwen_vl import QwenVLAdapter

#: Published shapes (the checkpoints' config.json), vocabulary sizes included.
SHAPES: dict[str, dict[str, Any]] = {
    "llava-1.5-7b": {
        "family": "llava",
        "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16},
        "text": {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32064,
        },
        "image_size": 336,
        "patch_size": 14,
    },
    "qwen2.5-vl-7b": {
        "family": "qwen2.5-vl",
        "vision": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 3584,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
        "text": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        },
        # Qwen2.5-VL's processor bounds: 256-1280 visual tokens per image for this benchmark's image.
        "min_pixels": 256 * 28 * 28,
        "max_pixels": 1280 * 28 * 28,
    },
    "tiny-qwen": {
        "family": "qwen2.5-vl",
        "vision": {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "vocab_size": 1000,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
        },
        "min_pixels": 56 * 56,
        "max_pixels": 28 * 28 * 16,
    },
    "tiny": {
        "family": "llava",
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "text": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": 1000,
        },
        "image_size": 32,
        "patch_size": 8,
    },
}


def build_llava(shape: dict[str, Any], dtype: torch.dtype, device: torch.device) -> LlavaAdapter:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = build_tokenizer(["<image>"], chat_template=LLAVA_CHAT_TEMPLATE)
    size, patch = shape["image_size"], shape["patch_size"]
    vision = CLIPVisionConfig(**shape["vision"], image_size=size, patch_size=patch, projection_dim=768)
    text = LlamaConfig(
        **shape["text"],
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(size // patch) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = _instantiate(LlavaForConditionalGeneration, config, dtype, device)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return LlavaAdapter(model, llava_processor(tokenizer, image_size=size, patch_size=patch), "random llava-1.5-7b")


def build_qwen(shape: dict[str, Any], dtype: torch.dtype, device: torch.device) -> QwenVLAdapter:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessorPil,
    )

    from smoothguard.models.qwen_vl import image_only_processor_class

    specials = ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = build_tokenizer(
        specials, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=QWEN_VL_CHAT_TEMPLATE
    )
    ids = {f"{n}_token_id": tokenizer.convert_tokens_to_ids(f"<|{n}|>") for n in ("vision_start", "vision_end")}
    ids.update(
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
    )
    text = {**shape["text"], "max_position_embeddings": 32768, "pad_token_id": tokenizer.pad_token_id}
    text.update(bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=shape["vision"], **ids)
    model = _instantiate(Qwen2_5_VLForConditionalGeneration, config, dtype, device)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": shape["min_pixels"], "longest_edge": shape["max_pixels"]}, patch_size=14
    )
    processor = image_only_processor_class(Qwen2_5_VLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_VL_CHAT_TEMPLATE
    )
    return QwenVLAdapter(model, processor, "random qwen2.5-vl-7b")


def _instantiate(model_class: Any, config: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """The model built straight on ``device`` in ``dtype`` (a 7B model in fp32 on the host would need 28 GB)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def driver() -> str:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip() or done.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi not available ({exc})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=[*SHAPES, "all"], default="all", help="default: both 7B shapes")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--num-copies", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"device: {driver() if device.type == 'cuda' else 'cpu'}")
    image = torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(0))
    everything = {}
    for name in ("llava-1.5-7b", "qwen2.5-vl-7b") if args.shape == "all" else (args.shape,):
        shape = SHAPES[name]
        model = (build_llava if shape["family"] == "llava" else build_qwen)(shape, dtype, device)
        figures = measure(
            model,
            image,
            "What is in the image?",
            new_tokens=args.new_tokens,
            num_copies=args.num_copies,
            repeats=args.repeats,
            forced=True,
            description=f"random {name} (exact shape), {args.dtype}, a 640x480 image",
        )
        if device.type == "cuda":
            figures["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        report(figures)
        everything[name] = figures
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    if args.json:
        print(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
