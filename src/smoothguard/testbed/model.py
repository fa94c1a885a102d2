"""The testbed model: a small real ``LlavaForConditionalGeneration`` (CLIP ViT vision tower + Llama
text model, LLaVA-1.5's prompt format and processor) trained from scratch on the testbed scenes.

Two checkpoints ship: ``testbed`` (``CHECKPOINT_DIR``), the model every figure is measured on, and
``testbed-surrogate`` (``SURROGATE_DIR``), trained independently (another seed and another shape) so
that a universal image made on it can be transferred to ``testbed``, as Qi et al.'s image was made on
another model. ``checkpoint`` and ``surrogate`` are their entry points in the ``smoothguard.models``
group, so ``load_model("testbed")`` and ``load_model("testbed-surrogate")`` load them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from smoothguard.errors import ModelLoadError
from smoothguard.models.build import LLAVA_CHAT_TEMPLATE, build_tokenizer, llava_processor, random_llava
from smoothguard.testbed import ASSETS
from smoothguard.testbed.scenes import IMAGE_SIZE
from smoothguard.testbed.tasks import vocabulary_corpus

CHECKPOINT_DIR = ASSETS / "checkpoint"
SURROGATE_DIR = ASSETS / "surrogate"
_CHAT_WORDS = ["USER: <image>\n", " ASSISTANT:", "USER:"]


def checkpoint() -> Path:
    """The folder of the shipped checkpoint (the ``testbed`` model plug-in); ``ModelLoadError`` if missing."""
    return _shipped(CHECKPOINT_DIR, "testbed")


def surrogate() -> Path:
    """The folder of the shipped surrogate (the ``testbed-surrogate`` model plug-in)."""
    return _shipped(SURROGATE_DIR, "testbed-surrogate")


def _shipped(folder: Path, name: str) -> Path:
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"the {name} checkpoint is missing from {folder}; reinstall smoothguard")
    return folder


@dataclass(frozen=True)
class ModelSize:
    """Sizes of a testbed model. 64x64 images in 8-pixel patches -> 64 image tokens. The projector
    reads the second-last vision layer (LLaVA-1.5's choice), so the last one is never used."""

    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 5
    vision_mlp_ratio: int = 4
    text_hidden: int = 192
    text_layers: int = 4
    heads: int = 4


#: The surrogate's shape: narrower and shallower than ``ModelSize()`` in both towers.
SURROGATE_SIZE = ModelSize(vision_hidden=96, vision_layers=4, text_hidden=160, text_layers=3)


def build_processor():
    """The LLaVA processor of the testbed: CLIP image processor at 64 px, word-sized BPE tokens."""
    tokenizer = build_tokenizer(
        ["<image>"], vocab_size=1000, chat_template=LLAVA_CHAT_TEMPLATE, corpus=[*_CHAT_WORDS, *vocabulary_corpus()]
    )
    return llava_processor(tokenizer, image_size=IMAGE_SIZE, patch_size=ModelSize.patch_size)


def build_model(processor, shape: ModelSize = ModelSize(), seed: int = 0):
    """A freshly initialised testbed ``LlavaForConditionalGeneration`` for ``processor``."""
    model = random_llava(
        processor.tokenizer,
        image_size=IMAGE_SIZE,
        patch_size=shape.patch_size,
        vision_hidden=shape.vision_hidden,
        vision_layers=shape.vision_layers,
        text_hidden=shape.text_hidden,
        text_layers=shape.text_layers,
        heads=shape.heads,
        vision_mlp_ratio=shape.vision_mlp_ratio,
        max_positions=512,
        seed=seed,
    )
    model.config.testbed_shape = asdict(shape)
    return model.train()
