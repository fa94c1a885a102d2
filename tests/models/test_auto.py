"""Plug-ins found through entry points: models (``smoothguard.models``) and benchmarks
(``smoothguard.benchmarks``), with the testbed's installed entries as the real example."""

import ast
from importlib.metadata import EntryPoint, EntryPoints, entry_points
from pathlib import Path

import pytest
import torch

import smoothguard
from smoothguard import ConfigError, ModelLoadError, SmoothGuard, load_model, registry
from smoothguard.models import auto
from smoothguard.testbed import model as testbed_model

PROMPT = "What is in the image?"


PLUGIN_FOLDER: Path | None = None  # what the plug-in below returns; set per test


def plugin_folder() -> Path:
    return PLUGIN_FOLDER


def broken_plugin() -> Path:
    raise RuntimeError("the weights are on another disk")


@pytest.fixture
def plugins(monkeypatch):
    """Register extra model plug-ins (name -> "module:attr") beside the installed ones."""

    def register(**targets: str) -> None:
        group = auto.MODELS.group
        extra = [EntryPoint(name, value, group) for name, value in targets.items()]
        installed = entry_points
        monkeypatch.setattr(
            registry,
            "entry_points",
            lambda **params: EntryPoints([*installed(**params), *(e for e in extra if params["group"] == group)]),
        )

    return register


def test_a_model_plugin_is_loaded_under_its_own_name(plugins, tiny_llava_dir, monkeypatch):
    monkeypatch.setattr(f"{__name__}.PLUGIN_FOLDER", tiny_llava_dir)
    plugins(**{"my-model": f"{__name__}:plugin_folder"})
    assert "my-model" in auto.model_plugin_names()
    adapter = load_model("my-model")
    assert adapter.name == "my-model"
    assert adapter.family == "llava"


def test_an_existing_path_wins_over_a_plugin_of_that_name(plugins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model").mkdir()
    plugins(**{"my-model": f"{__name__}:broken_plugin"})
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model("my-model")


def test_plugin_errors(plugins, tmp_path, monkeypatch):
    monkeypatch.setattr(testbed_model, "CHECKPOINT_DIR", tmp_path / "gone")
    with pytest.raises(ModelLoadError, match=r"the testbed checkpoint is missing from .*gone; reinstall smoothguard"):
        load_model("testbed")
    plugins(broken=f"{__name__}:broken_plugin", nowhere=f"{__name__}:plugin_folder")
    with pytest.raises(ModelLoadError, match=r"model plug-in 'broken' .* failed: the weights are on another disk"):
        load_model("broken")
    monkeypatch.setattr(f"{__name__}.PLUGIN_FOLDER", tmp_path / "missing")
    with pytest.raises(ModelLoadError, match=r"model plug-in 'nowhere' .* which is not a folder"):
        load_model("nowhere")
    monkeypatch.setattr(f"{__name__}.PLUGIN_FOLDER", tmp_path)
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model("nowhere")


def test_an_unknown_model_name_lists_the_plugins():
    with pytest.raises(ModelLoadError, match=r"'no-such-plugin'.*or a model plug-in: .*testbed"):
        load_model("no-such-plugin")


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_plugins_are_not_named_below_them():
    package = Path(smoothguard.__file__).parent
    for layer in ("models", "eval"):
        for path in (package / layer).rglob("*.py"):
            assert not any(m.startswith("smoothguard.testbed") for m in _imported_modules(path)), path
    for path in (package / "testbed").rglob("*.py"):
        assert "smoothguard.models.tiny" not in _imported_modules(path), path
    assert not (package / "testing.py").exists()


@pytest.mark.parametrize("device_map", ["cpu", {"": "cpu"}, "auto"])
def test_a_device_map_loads_through_from_pretrained(tiny_llava_dir, image_file, device_map):
    model = load_model(tiny_llava_dir, device_map=device_map)
    assert model.device == torch.device("cpu") and model.model.get_input_embeddings().weight.device.type == "cpu"
    assert not any(p.requires_grad for p in model.model.parameters())
    answer = SmoothGuard(model, num_copies=0).generate(PROMPT, image=image_file, max_new_tokens=3).text
    reference = SmoothGuard(load_model(tiny_llava_dir), num_copies=0).generate(
        PROMPT, image=image_file, max_new_tokens=3
    )
    assert answer == reference.text


def test_attention_implementation_and_the_conflicts(tiny_llava_dir):
    assert load_model(tiny_llava_dir, attn_implementation="eager").model.config._attn_implementation == "eager"
    with pytest.raises(ConfigError, match="device or a device_map"):
        load_model(tiny_llava_dir, device="cpu", device_map="auto")
    with pytest.raises(ConfigError, match="runs on its server"):
        load_model("openai:http://127.0.0.1:9/v1#m", device_map="auto")


def test_compile_decode_opts_in_to_a_static_cache_and_a_compiled_forward(tiny_llava_dir):
    model = load_model(tiny_llava_dir, compile_decode=True)  # compiled lazily: nothing is generated here
    assert model.model.generation_config.cache_implementation == "static"
    assert hasattr(model.model.forward, "_torchdynamo_orig_callable")  # torch.compile's wrapper
    assert not hasattr(load_model(tiny_llava_dir).model.forward, "_torchdynamo_orig_callable")
