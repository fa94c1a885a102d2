"""Shared fixtures. Everything runs offline on tiny random models built from config objects and
loaded back through ``load_model(folder)``, the path a hub id takes."""

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def exact(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern for exactly ``message``, the whole one-line error."""
    return "^" + re.escape(message) + "$"


_REFERENCE_SKIPS: dict[str, int] = {}


def needs_reference(folder: Path, what: str) -> pytest.MarkDecorator:
    """Mark tests that compare with third-party reference data in ``folder`` (under ../shared/fixtures).

    Where the folder is absent they skip, and the session ends with a line naming it; under ``CI=true``
    (CI always has ../shared beside its clone) they fail instead, so a lost fixture cannot pass quietly."""
    return pytest.mark.reference(folder=folder, what=what)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reference(folder, what): compares with ../shared reference data")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("reference"):
        folder, what = mark.kwargs["folder"], mark.kwargs["what"]
        if folder.is_dir():
            continue
        reason = f"reference data {folder} is absent ({what})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI has ../shared beside its clone, so this check must run", pytrace=False)
        _REFERENCE_SKIPS[reason] = _REFERENCE_SKIPS.get(reason, 0) + 1
        pytest.skip(reason)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for reason, count in _REFERENCE_SKIPS.items():
        line = f"REFERENCE CHECKS NOT RUN: {count} tests skipped, {reason}"
        terminalreporter.write_line(line, yellow=True, bold=True)


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
