"""Tests of ``smoothguard.eval.base``."""

from importlib.metadata import entry_points
from pathlib import Path

import pytest

from smoothguard import ConfigError, registry
from smoothguard.eval import base as eval_base
from smoothguard.eval import (
    benchmark_names,
    get_benchmark,
    register_benchmark,
)
from smoothguard.testbed.benchmarks import TestbedPopeBenchmark, TestbedSafetyBenchmark
from support.common import exact
from support.eval import Shapes


def test_entry_point_and_lazy_registrations(monkeypatch):
    class EntryPoint:
        name = "from-a-package"

        def load(self):
            return Shapes

    installed = registry.entry_points  # the real ones register the testbed's benchmarks
    monkeypatch.setattr(registry, "entry_points", lambda group: [*installed(group=group), EntryPoint()])
    assert {"from-a-package", "pope", "mm-safety", "llava-bench", "testbed-pope", "testbed-safety"} <= set(
        benchmark_names()
    )
    assert get_benchmark("testbed-safety").name == "testbed-safety"
    assert isinstance(get_benchmark("from-a-package"), Shapes)
    register_benchmark("lazy-shapes", "support.eval:Shapes")
    try:
        assert isinstance(get_benchmark("lazy-shapes"), Shapes)
    finally:
        eval_base.BENCHMARKS.entries.pop("lazy-shapes")
    register_benchmark("broken", "no.such.module:Thing")
    try:
        with pytest.raises(ConfigError, match="cannot be imported"):
            get_benchmark("broken")
    finally:
        eval_base.BENCHMARKS.entries.pop("broken")


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


def test_every_built_in_benchmark_declares_its_options_and_the_commands_offer_them():
    """A built-in benchmark's options are its ``Options`` fields, and eval, sweep and certify have a flag for
    each (their help naming the benchmarks that take it)."""
    import argparse
    from dataclasses import fields

    from smoothguard.cli.options import add_benchmark_options, benchmark_options
    from smoothguard.eval.base import BENCHMARKS, builtin_options, get_benchmark

    declared = builtin_options()
    for name in ("pope", "mm-safety", "llava-bench"):
        options = get_benchmark(name).Options
        assert options is not None and all(f.default is None and f.metadata["help"] for f in fields(options))
        assert all(name in [bench for bench, _ in declared[f.name]] for f in fields(options))
    assert [bench for bench, _ in declared["images"]] == ["llava-bench", "pope"]
    assert set(declared) == {f.name for name in BENCHMARKS.entries for f in fields(get_benchmark(name).Options)}
    parser = argparse.ArgumentParser()
    add_benchmark_options(parser)
    args = parser.parse_args(["--splits", "adversarial", "--images", "imgs", "--option", "num-scenes=3"])
    assert benchmark_options(args) == {"splits": "adversarial", "images": Path("imgs"), "num_scenes": "3"}
    help_text = " ".join(parser.format_help().split())
    assert "--images IMAGES llava-bench: image folder (default DIR/images); pope: image folder" in help_text
    with pytest.raises(ConfigError, match=exact("--option takes KEY=VALUE, got 'novalue'")):
        benchmark_options(parser.parse_args(["--option", "novalue"]))


def test_options_a_benchmark_does_not_declare_are_refused_before_loading(tmp_path):
    from smoothguard.eval.base import get_benchmark

    pope = get_benchmark("pope")
    message = "benchmark pope does not take option(s) scenarios, variant (it takes: questions, labels, images, splits)"
    with pytest.raises(ConfigError, match=exact(message)):
        pope.check_options(tmp_path, {"variant": "SD", "scenarios": "01"})
    with pytest.raises(ConfigError, match=exact(message)):
        pope.load_items(tmp_path, variant="SD", scenarios="01")
    assert pope.parse_options({"splits": "random"}) == pope.Options(splits="random")
