"""Tiny random models on the real processor, tokenizer and chat-template files of LLaVA-1.5-7B and
Qwen2-VL-2B (``../shared/fixtures/model-configs``), saved to a folder for ``load_model(folder)``: shared by
the test modules that need them (callers skip with ``conftest.needs_reference`` where the files are absent).
"""

import json
import shutil
from pathlib import Path

import torch

from support.common import SHARED

FIXTURES = SHARED / "fixtures" / "model-configs"

LLAVA_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "generation_config.json",
)
QWEN2_VL_FILES = ("preprocessor_config.json", "tokenizer_config.json", "chat_template.json", "generation_config.json")
QWEN2_BPE_FILES = ("vocab.json", "merges.txt")


def _copy(source: Path, folder: Path, names: tuple[str, ...]) -> None:
    for name in names:
        shutil.copyfile(source / name, folder / name)


def save_real_llava(folder: Path) -> Path:
    """``llava-hf/llava-1.5-7b-hf``'s processor, tokenizer and chat template; its config shrunk (same
    vocabulary, image token, 336 px / 14 px patches = 576 image tokens); random weights."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    source = FIXTURES / "llava-1.5-7b-hf"
    config = json.loads((source / "config.json").read_text())
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config["text_config"].update(small, num_key_value_heads=2)
    config["vision_config"].update(small, projection_dim=32)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(LlavaConfig.from_dict(config)).eval().save_pretrained(folder)
    _copy(source, folder, LLAVA_FILES)
    return folder


def save_real_qwen2_vl(folder: Path) -> Path:
    """``Qwen/Qwen2-VL-2B-Instruct``'s image processor (real min/max pixels), tokenizer (Qwen2 BPE) and
    chat template; its config shrunk (same vocabulary, special token ids, 14 px patches merged 2x2,
    temporal patch 2); random weights."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    source = FIXTURES / "Qwen2-VL-2B-Instruct"
    config = json.loads((source / "config.json").read_text())
    config.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    config.update(num_key_value_heads=1, max_window_layers=2)
    # M-RoPE splits head_dim / 2 = 16 rotary frequencies into (temporal, height, width).
    config["rope_scaling"]["mrope_section"] = [4, 6, 6]
    config["vision_config"].update(depth=1, embed_dim=32, num_heads=2, hidden_size=64, mlp_ratio=2)
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_dict(config)).eval().save_pretrained(folder)
    _copy(source, folder, QWEN2_VL_FILES)
    _copy(FIXTURES / "qwen2-bpe", folder, QWEN2_BPE_FILES)
    return folder
