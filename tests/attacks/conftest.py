import pytest

from smoothguard import load_model
from smoothguard.models.tiny import BUILDERS

IMAGE_FAMILIES = ["llava", "qwen2-vl", "qwen2.5-vl"]
ALL_FAMILIES = [*IMAGE_FAMILIES, "qwen2-audio"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """``zoo(family)``: the tiny model of ``family``, built and loaded once per module."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_model(BUILDERS[family](tmp_path_factory.mktemp(family)))
        return cache[family]

    return get


@pytest.fixture(params=ALL_FAMILIES)
def model(request, zoo):
    return zoo(request.param)


@pytest.fixture
def llava(zoo):
    return zoo("llava")
