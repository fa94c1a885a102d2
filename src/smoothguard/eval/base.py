"""The benchmark contract and its registry (see the package docstring for how to add a benchmark)."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from smoothguard.errors import ConfigError
from smoothguard.records import EvalItem
from smoothguard.registry import Registry

if TYPE_CHECKING:
    from smoothguard.eval.judges import Judge

#: One score table: group (split, scenario, category, "all", ...) -> metric name -> value.
Scores = dict[str, dict[str, Any]]


def option(help: str, kind: type = str) -> Any:
    """A field of a benchmark's ``Options`` dataclass: ``None`` unless given (the benchmark's layout decides);
    ``help`` (what it is, its default) and ``kind`` (``str`` or ``Path``) make its flag ``--name-with-dashes``
    of ``eval``, ``sweep`` and ``certify``."""
    return field(default=None, metadata={"help": help, "kind": kind})


class Benchmark(ABC):
    """A benchmark: loads items, assesses answers (with a judge where it needs one) and scores records.

    Class attributes: ``name``; ``max_new_tokens`` (default answer length); ``kind`` (``utility`` or
    ``safety``: which sigma-sweep plot it feeds); ``headline`` (``group.metric`` keys a sweep plots);
    ``judges`` (judge names it accepts, the first is the default) and ``judge_required``;
    ``needs_data`` (whether ``load_items`` needs a data folder); ``Options``: the options ``load_items``
    takes, a dataclass of :func:`option` fields (``load_items(data_dir, **options)`` reads them with
    :meth:`parse_options`); ``None``: ``load_items``' own keyword parameters are its options (given with
    ``--option KEY=VALUE``).
    """

    name: ClassVar[str]
    max_new_tokens: ClassVar[int] = 128
    kind: ClassVar[Literal["utility", "safety"]] = "utility"
    headline: ClassVar[tuple[str, ...]] = ()
    judges: ClassVar[tuple[str, ...]] = ()
    judge_required: ClassVar[bool] = False
    needs_data: ClassVar[bool] = True
    Options: ClassVar[type | None] = None

    @abstractmethod
    def load_items(self, data_dir: Path | None, **options: Any) -> list[EvalItem]:
        """Every item of the benchmark, in a fixed order. Raise ``DataError`` on a bad layout."""

    def assess(self, items: Sequence[EvalItem], answers: Sequence[str], judge: Judge | None) -> list[dict[str, Any]]:
        """Per-item fields added to each record (verdicts, reviews, parsed answers); default: none."""
        return [{} for _ in items]

    def check_judge(self, judge: Judge | None) -> None:
        """Refuse an unsuitable judge (``ConfigError``); called after ``load_items``, before anything is
        generated. The default accepts the judges named in ``judges`` (and none, unless ``judge_required``)."""
        if judge is None and self.judge_required:
            raise ConfigError(f"benchmark {self.name} needs a judge: pass --judge {' | '.join(self.judges)}")
        if judge is not None and judge.name not in self.judges:
            accepted = ", ".join(self.judges) or "none (it needs no judge)"
            raise ConfigError(f"benchmark {self.name} does not use the {judge.name} judge; it takes {accepted}")

    @abstractmethod
    def score(self, records: Sequence[dict[str, Any]]) -> Scores:
        """Scores of the records present (each has ``id``, ``text``, ``meta`` and the ``assess`` fields)."""

    def check_options(self, data_dir: Path | None, options: dict[str, Any]) -> None:
        """``ConfigError`` unless ``load_items`` takes these options (and a data folder when it needs one)."""
        if self.needs_data and data_dir is None:
            raise ConfigError(f"benchmark {self.name} needs its data folder: pass --data DIR")
        if self.Options is not None:
            self.parse_options(options)
            return
        try:
            inspect.signature(self.load_items).bind(data_dir, **options)
        except TypeError as exc:
            accepted = [p for p in inspect.signature(self.load_items).parameters if p != "data_dir"]
            raise ConfigError(
                f"benchmark {self.name} does not take option(s) {', '.join(sorted(options))} "
                f"(it takes: {', '.join(accepted) or 'none'})"
            ) from exc

    def parse_options(self, options: dict[str, Any]) -> Any:
        """``options`` as an instance of ``Options``; ConfigError naming the ones it does not take."""
        accepted = [f.name for f in fields(self.Options)]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(
                f"benchmark {self.name} does not take option(s) {', '.join(unknown)} "
                f"(it takes: {', '.join(accepted) or 'none'})"
            )
        return self.Options(**options)


BenchmarkFactory = Callable[[], Benchmark]

#: The benchmarks by name: factories or "module:attribute" (imported when first asked for). Plug-ins (the
#: testbed's benchmarks, other packages') are ``smoothguard.benchmarks`` entry points.
BENCHMARKS: Registry[BenchmarkFactory] = Registry(
    "benchmark",
    entries={
        "llava-bench": "smoothguard.eval.llava_bench:LlavaBenchmark",
        "mm-safety": "smoothguard.eval.mm_safety:MMSafetyBenchmark",
        "pope": "smoothguard.eval.pope:PopeBenchmark",
    },
    group="smoothguard.benchmarks",
)


def register_benchmark(name: str, factory: BenchmarkFactory | str) -> None:
    """Make ``factory`` (a zero-argument callable returning a ``Benchmark``, or ``"module:attr"``) the
    benchmark called ``name``; replaces an earlier registration of that name."""
    BENCHMARKS.register(name, factory)


def benchmark_names() -> list[str]:
    """Registered names, including those of installed packages' ``smoothguard.benchmarks`` entry points."""
    return BENCHMARKS.names()


def get_benchmark(name: str) -> Benchmark:
    """A fresh instance of the benchmark registered as ``name``."""
    benchmark = BENCHMARKS.get(name)()
    if not isinstance(benchmark, Benchmark):
        raise ConfigError(f"the factory of benchmark {name!r} returned {type(benchmark).__name__}, not a Benchmark")
    return benchmark


def builtin_options() -> dict[str, list[tuple[str, Any]]]:
    """The options of the built-in benchmarks that declare ``Options``: option name -> [(benchmark, field)],
    in registration order (the command line's flags; plug-ins' options go through ``--option``)."""
    found: dict[str, list[tuple[str, Any]]] = {}
    for name in BENCHMARKS.entries:
        try:
            declared = getattr(BENCHMARKS.get(name), "Options", None)
        except ConfigError:  # a registration that cannot be imported says so when it is used
            continue
        for declared_field in fields(declared) if declared is not None else ():
            found.setdefault(declared_field.name, []).append((name, declared_field))
    return found
