"""Plug-ins found through entry points: models (``smoothguard.models``) and benchmarks
(``smoothguard.benchmarks``), with the testbed's installed entries as the real example."""

import ast
from importlib.metadata import EntryPoint, EntryPoints, entry_points
from pathlib import Path

import pytest

import smoothguard
from smoothguard import ConfigError, ModelLoadError, load_model, registry
from smoothguard.eval import base as eval_base
from smoothguard.eval.base import benchmark_names, get_benchmark
from smoothguard.models import auto
from smoothguard.testbed import model as testbed_model
from smoothguard.testbed.benchmarks import TestbedPopeBenchmark, TestbedSafetyBenchmark

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


def test_the_testbed_model_is_an_installed_plugin():
    (entry,) = entry_points(group="smoothguard.models", name="testbed")
    assert entry.value == "smoothguard.testbed.model:checkpoint"
    assert entry.load()() == testbed_model.CHECKPOINT_DIR
    assert (testbed_model.checkpoint() / "config.json").is_file()
    assert "testbed" in auto.model_plugin_names()


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


def test_the_testbed_benchmarks_are_installed_plugins():
    installed = {entry.name: entry.value for entry in entry_points(group=eval_base.BENCHMARKS.group)}
    assert installed["testbed-pope"] == "smoothguard.testbed.benchmarks:TestbedPopeBenchmark"
    assert installed["testbed-safety"] == "smoothguard.testbed.benchmarks:TestbedSafetyBenchmark"
    assert not {"testbed-pope", "testbed-safety"} & set(eval_base.BENCHMARKS.entries)
    assert {"pope", "mm-safety", "llava-bench", "testbed-pope", "testbed-safety"} <= set(benchmark_names())
    assert isinstance(get_benchmark("testbed-pope"), TestbedPopeBenchmark)
    assert isinstance(get_benchmark("testbed-safety"), TestbedSafetyBenchmark)
    with pytest.raises(ConfigError, match=r"unknown benchmark 'no-such-bench'; choose one of .*testbed-pope"):
        get_benchmark("no-such-bench")


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
