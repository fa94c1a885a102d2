"""Tests of ``smoothguard.eval.base``."""

from importlib.metadata import entry_points

import pytest

from smoothguard import ConfigError
from smoothguard.eval import base as eval_base
from smoothguard.eval import (
    benchmark_names,
    get_benchmark,
    register_benchmark,
)
from smoothguard.testbed.benchmarks import TestbedPopeBenchmark, TestbedSafetyBenchmark
from support.eval import Shapes


def test_entry_point_and_lazy_registrations(monkeypatch):
    class EntryPoint:
        name = "from-a-package"

        def load(self):
            return Shapes

    installed = eval_base.entry_points  # the real ones register the testbed's benchmarks
    monkeypatch.setattr(eval_base, "entry_points", lambda group: [*installed(group=group), EntryPoint()])
    assert {"from-a-package", "pope", "mm-safety", "llava-bench", "testbed-pope", "testbed-safety"} <= set(
        benchmark_names()
    )
    assert get_benchmark("testbed-safety").name == "testbed-safety"
    assert isinstance(get_benchmark("from-a-package"), Shapes)
    register_benchmark("lazy-shapes", "support.eval:Shapes")
    try:
        assert isinstance(get_benchmark("lazy-shapes"), Shapes)
    finally:
        eval_base._REGISTRY.pop("lazy-shapes")
    register_benchmark("broken", "no.such.module:Thing")
    try:
        with pytest.raises(ConfigError, match="cannot be imported"):
            get_benchmark("broken")
    finally:
        eval_base._REGISTRY.pop("broken")


def test_the_testbed_benchmarks_are_installed_plugins():
    installed = {entry.name: entry.value for entry in entry_points(group=eval_base.ENTRY_POINT_GROUP)}
    assert installed["testbed-pope"] == "smoothguard.testbed.benchmarks:TestbedPopeBenchmark"
    assert installed["testbed-safety"] == "smoothguard.testbed.benchmarks:TestbedSafetyBenchmark"
    assert not {"testbed-pope", "testbed-safety"} & set(eval_base._REGISTRY)
    assert {"pope", "mm-safety", "llava-bench", "testbed-pope", "testbed-safety"} <= set(benchmark_names())
    assert isinstance(get_benchmark("testbed-pope"), TestbedPopeBenchmark)
    assert isinstance(get_benchmark("testbed-safety"), TestbedSafetyBenchmark)
    with pytest.raises(ConfigError, match=r"unknown benchmark 'no-such-bench'; choose one of .*testbed-pope"):
        get_benchmark("no-such-bench")
