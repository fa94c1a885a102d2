"""Shared fixtures. Everything runs offline on tiny random models built from config objects and
loaded back through ``load_model(folder)``, the path a hub id takes."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from smoothguard.models.tiny import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def tiny_llava(tiny_llava_dir: Path):
    from smoothguard import load_model

    return load_model(tiny_llava_dir)


@pytest.fixture(scope="session")
def minilm():
    from smoothguard.embed import MiniLMEmbedder

    return MiniLMEmbedder()


@pytest.fixture(scope="session")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 60x80 RGB PNG of smooth random colour blobs."""
    rng = np.random.default_rng(0)
    small = Image.fromarray((rng.random((8, 10, 3)) * 255).astype(np.uint8))
    path = tmp_path_factory.mktemp("images") / "scene.png"
    small.resize((80, 60), Image.BILINEAR).save(path)
    return path
