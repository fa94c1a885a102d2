"""Run a benchmark into a run folder (``eval.store``), resumably.

A run folder holds ``run.json`` (the settings that shape the records), ``records.jsonl`` (one record
per item, appended and fsynced as produced; ``records.shard-I-of-N.jsonl`` per shard), and, after
every invocation, ``summary.json`` and ``report.md``. Rerunning the same command resumes: items with
a record are skipped, a line torn by ``kill -9`` is cut off and redone. A rerun with other settings
is refused (``RunConflictError``); ``--limit``, ``--shard``, batch sizes and the device may change.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from smoothguard.config import GuardConfig
from smoothguard.errors import ConfigError, check_int
from smoothguard.eval.base import Benchmark, EvalItem, Scores, get_benchmark
from smoothguard.eval.errors import DataError
from smoothguard.eval.jsonl import read_json, write_json_atomic, write_text_atomic
from smoothguard.eval.judges import Judge, make_judge
from smoothguard.eval.report import render_report
from smoothguard.eval.store import DurableAppender, RunFolder, read_records
from smoothguard.guard import GuardResult, SmoothGuard
from smoothguard.models.base import MLLMAdapter
from smoothguard.provenance import versions

RECORD_KEYS = ("id", "question_id", "prompt", "text", "image", "meta", "model_id", "defense", "timings", "judge")
ModelSource = MLLMAdapter | Callable[[], MLLMAdapter] | None
#: Guard settings that do not shape the answers (left out of a run's settings, may change on resume).
RUNTIME_SETTINGS = ("batch_size",)


@dataclass(frozen=True)
class GuardSpec:
    """How answers are produced: the model (``load_model`` source, dtype, device, and further ``loading``
    keywords such as ``device_map``, which do not shape the answers) and the guard's config.

    ``guard.num_copies == 0`` is the undefended baseline; then the noise settings do not shape the
    answers and are left out of the run's settings. ``device`` and ``guard.batch_size`` (most
    candidates per ``generate`` call) do not shape them either.
    """

    model: str
    dtype: str = "auto"
    device: str = "auto"
    guard: GuardConfig = field(default_factory=GuardConfig)
    loading: dict[str, Any] = field(default_factory=dict)

    @property
    def defended(self) -> bool:
        return self.guard.defended

    def resolved(self, adapter: MLLMAdapter | None = None) -> GuardSpec:
        """This spec with the guard's noise space and sigma made concrete: from ``adapter`` when it is loaded
        already, else from the checkpoint's config (no weights loaded). The undefended one as it is."""
        from smoothguard.models.auto import resolve_noise_space

        if not self.defended:
            return self
        space = self.guard.noise_space or (adapter.default_noise_space if adapter else None)
        return replace(self, guard=self.guard.resolve(resolve_noise_space(self.model, space)))

    def settings(self) -> dict[str, Any]:
        """The part of the run settings that shapes the answers (call it on a ``resolved`` spec)."""
        model = str(Path(self.model).resolve()) if Path(self.model).exists() else self.model
        guard: dict[str, Any] = {"model": model, "dtype": self.dtype, "defense": None}
        if self.defended:
            guard["defense"] = {k: v for k, v in self.guard.to_dict().items() if k not in RUNTIME_SETTINGS}
        return guard

    def load_model(self) -> MLLMAdapter:
        from smoothguard.models import load_model

        return load_model(self.model, dtype=self.dtype, device=self.device, **self.loading)

    def build(self, model: MLLMAdapter) -> SmoothGuard:
        return SmoothGuard(model, self.guard)


def resolve_judge(benchmark: Benchmark, judge: Judge | None) -> Judge | None:
    """The judge a run uses: ``judge``, or the benchmark's default where it needs one."""
    if judge is None and benchmark.judge_required:
        judge = make_judge(benchmark.judges[0])
    benchmark.check_judge(judge)
    return judge


def evaluate(
    benchmark: Benchmark | str,
    spec: GuardSpec,
    out: str | Path,
    *,
    data: str | Path | None = None,
    options: dict[str, Any] | None = None,
    judge: Judge | None = None,
    model: ModelSource = None,
    limit: int | None = None,
    shard: tuple[int, int] | None = None,
    questions_per_batch: int = 4,
    max_new_tokens: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run (or resume) ``benchmark`` into the run folder ``out`` and return its summary.

    ``options``: the benchmark's ``load_items`` options (``None`` values dropped). ``model``: an
    adapter, or a zero-argument loader called only if there is work left (default: ``spec.load_model``).
    ``limit``: the first N items only; ``shard``: ``(i, n)`` of those. ``questions_per_batch``: items
    guarded per ``generate_batch`` call (all their candidates in one ``generate``, capped by
    ``spec.guard.batch_size``). ``progress``: ``False`` shows none; ``True`` or ``None`` a bar on a terminal,
    periodic lines on stderr otherwise (``smoothguard.progress``).
    """
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    spec = spec.resolved(model if isinstance(model, MLLMAdapter) else None)
    options = {key: value for key, value in (options or {}).items() if value is not None}
    data_dir = Path(data) if data is not None else None
    for name, value in (
        ("limit", limit),
        ("questions_per_batch", questions_per_batch),
        ("max_new_tokens", max_new_tokens),
    ):
        if value is not None:
            check_int(name, value, minimum=1)
    bench.check_options(data_dir, options)
    items = bench.load_items(data_dir, **options)
    judge = resolve_judge(bench, judge)
    ids = {item.id for item in items}
    if len(ids) != len(items):
        raise DataError(f"benchmark {bench.name} has duplicate item ids; ids must be unique")
    selected = items[:limit] if limit else items
    mine = selected[shard[0] :: shard[1]] if shard else selected
    tokens = max_new_tokens or bench.max_new_tokens
    settings = {
        "benchmark": bench.name,
        "data": str(data_dir.resolve()) if data_dir is not None else None,
        "options": _jsonable(options),
        "guard": spec.settings(),
        "max_new_tokens": tokens,
        "judge": judge.identity() if judge else None,
    }
    folder = RunFolder(Path(out), settings)
    records = read_records(folder.path)
    strangers = [r["id"] for r in records if r["id"] not in ids]
    if strangers:
        raise DataError(f"run folder {out} has records of items the benchmark does not have (e.g. {strangers[0]})")
    done = {r["id"] for r in records}
    todo = [item for item in mine if item.id not in done]
    described = None
    if todo:
        _check_images(todo)
        adapter = model() if callable(model) else model or spec.load_model()
        described = adapter.describe()
        guard = spec.build(adapter)
        records += _generate(
            bench, guard, judge, todo, folder.records_path(shard), questions_per_batch, tokens, progress
        )
    previous = folder.path / "summary.json"
    if described is None and previous.is_file():  # nothing was generated: keep the model of the last run that was
        described = read_json(previous, "run summary").get("model")
    wanted = {item.id for item in selected}
    summary = _summary(bench, folder, settings, [r for r in records if r["id"] in wanted], len(selected), len(items))
    summary["seed"] = spec.guard.seed if spec.defended else None
    summary["model"] = described
    summary["runtime"] = {
        "questions_per_batch": questions_per_batch,
        "batch_size": spec.guard.batch_size,
        "shard": shard,
    }
    write_json_atomic(folder.path / "summary.json", summary)
    write_text_atomic(folder.path / "report.md", render_report(summary))
    return summary


def _generate(
    bench: Benchmark,
    guard: SmoothGuard,
    judge: Judge | None,
    todo: Sequence[EvalItem],
    path: Path,
    questions_per_batch: int,
    max_new_tokens: int,
    progress: bool | None,
) -> list[dict[str, Any]]:
    from smoothguard.progress import Progress

    written: list[dict[str, Any]] = []
    bar = Progress(len(todo), f"eval {bench.name}", "item", enabled=progress)
    with DurableAppender(path) as appender, bar:
        for records in answer_batches(bench, guard, judge, todo, questions_per_batch, max_new_tokens):
            for record in records:
                appender.append(record)
            written += records
            bar.update(len(records))
    return written


def answer_batches(
    bench: Benchmark,
    guard: SmoothGuard,
    judge: Judge | None,
    items: Sequence[EvalItem],
    questions_per_batch: int,
    max_new_tokens: int,
) -> Iterator[list[dict[str, Any]]]:
    """The records of ``items`` (answered through ``guard``, assessed by ``bench`` with ``judge``), one list
    per ``generate_batch`` call of ``questions_per_batch`` items, as each call finishes: the loop of a run,
    without its run folder."""
    for start in range(0, len(items), questions_per_batch):
        batch = items[start : start + questions_per_batch]
        results = guard.generate_batch(
            [i.prompt for i in batch],
            [i.image for i in batch],
            ids=[i.id for i in batch],
            max_new_tokens=max_new_tokens,
        )
        started = time.perf_counter()
        extras = bench.assess(batch, [r.text for r in results], judge)
        judge_seconds = (time.perf_counter() - started) / len(batch)
        yield [
            _record(item, result, extra, judge, guard.config.defended, judge_seconds)
            for item, result, extra in zip(batch, results, extras, strict=True)
        ]


def _record(
    item: EvalItem,
    result: GuardResult,
    extra: dict[str, Any],
    judge: Judge | None,
    defended: bool,
    judge_seconds: float,
) -> dict[str, Any]:
    clash = set(extra) & set(RECORD_KEYS)
    if clash:
        raise ConfigError(f"benchmark fields {', '.join(sorted(clash))} clash with the runner's record fields")
    defense = None
    if defended:
        defense = {
            key: getattr(result, key)
            for key in (
                "candidates",
                "cluster_labels",
                "majority_fraction",
                "chosen_index",
                "clean_index",
                "cluster_sizes",
                "num_distinct",
            )
        }
    record = {
        "id": item.id,
        "question_id": item.meta.get("question_id"),
        "prompt": item.prompt,
        "text": result.text,
        "image": str(item.image) if isinstance(item.image, (str, os.PathLike)) else None,
        "meta": item.meta,
        "model_id": result.config["model"]["name"],
        "defense": defense,
        "timings": {**result.timings, "judge": judge_seconds},
        "judge": judge.identity() if judge else None,
    }
    return {**record, **extra}


def _summary(
    bench: Benchmark,
    folder: RunFolder,
    settings: dict[str, Any],
    records: list[dict[str, Any]],
    selected: int,
    total: int,
) -> dict[str, Any]:
    scores: Scores = bench.score(records) if records else {}
    per_item = [r["timings"]["total"] / r["timings"]["batch_queries"] for r in records]
    return {
        "benchmark": bench.name,
        "kind": bench.kind,
        "run_folder": str(folder.path.resolve()),
        "complete": len(records) == selected,
        "items": {"done": len(records), "selected": selected, "total": total},
        "headline": {key: lookup(scores, key) for key in bench.headline},
        "scores": scores,
        "settings": settings,
        "judge": settings["judge"],
        "timings": {"seconds_per_item": sum(per_item) / len(per_item) if per_item else None},
        "versions": dict(versions()),
        "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def lookup(scores: Scores, key: str) -> Any:
    """``scores["group"]["metric"]`` for the key ``group.metric`` (``None`` if absent)."""
    group, _, metric = key.rpartition(".")
    return scores.get(group, {}).get(metric)


def _check_images(items: Sequence[EvalItem]) -> None:
    missing = [i.image for i in items if isinstance(i.image, (str, os.PathLike)) and not Path(i.image).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of the {len(items)} images to answer are missing (first: {missing[0]}); "
            "put the benchmark's images where its layout says or pass --images DIR"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
