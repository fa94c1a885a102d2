"""Evaluation: benchmarks, judges, a resumable runner, sigma sweeps and plots.

Benchmarks are registered by name; ``smoothguard eval NAME`` and ``smoothguard sweep NAME`` run any
registered one. Built in: ``pope``, ``mm-safety``, ``llava-bench``, and the testbed's ``testbed-pope`` and
``testbed-safety`` (``smoothguard.testbed.benchmarks``).

Adding a benchmark (also from another package)::

    from smoothguard.eval import Benchmark, EvalItem, parse_yes_no, pope_metrics, register_benchmark

    class MyBench(Benchmark):
        name = "my-bench"
        max_new_tokens = 32            # default answer length
        kind = "utility"               # or "safety": which sweep plot it feeds
        headline = ("all.accuracy",)   # "group.metric" keys of score() that sweeps plot
        judges = ()                    # judge names it accepts (first = default); judge_required = ...
        needs_data = False             # True: load_items gets --data DIR

        def load_items(self, data_dir, *, size: int = 100) -> list[EvalItem]:
            # image: a file path, a PIL image or a float tensor [3, H, W] in [0, 1]
            return [EvalItem(id=str(i), prompt="Is there a square?", image=make_image(i), meta={"label": "yes"})
                    for i in range(size)]

        def assess(self, items, answers, judge):  # optional: extra fields per record
            return [{"prediction": "yes" if parse_yes_no(a) else "no"} for a in answers]

        def score(self, records) -> dict[str, dict]:  # group -> metric -> value
            return {"all": pope_metrics([parse_yes_no(r["text"]) for r in records],
                                        [r["meta"]["label"] == "yes" for r in records])}

    register_benchmark("my-bench", MyBench)              # or "package.module:MyBench" (imported lazily)

``load_items`` keyword options come from the command line (``--option size=50``, or the named flags of
the built-ins) and are passed only when given; they are part of a run's settings. A package can also
register through the entry-point group ``smoothguard.benchmarks`` (name -> factory).

Records (one JSON object per item, ``records.jsonl``): ``id``, ``question_id``, ``prompt``, ``text``
(the answer), ``image``, ``meta``, ``model_id``, ``defense`` (candidates and cluster statistics, or
``None``), ``timings`` (seconds, per batch, with ``batch_queries``), ``judge`` (identity), plus the
benchmark's ``assess`` fields. POPE and LLaVA-Bench records are also valid LLaVA answer/review files.
"""

from smoothguard.eval.base import Benchmark, EvalItem, benchmark_names, get_benchmark, register_benchmark
from smoothguard.eval.errors import DataError, JudgeError, RunConflictError
from smoothguard.eval.judges import (
    REFUSAL_PHRASES,
    GuardModelJudge,
    Judge,
    JudgeOptions,
    OpenAIJudge,
    RefusalJudge,
    SafetyCase,
    SafetyJudge,
    Verdict,
    make_judge,
    parse_verdict,
    register_judge,
)
from smoothguard.eval.llava_bench import llava_bench_scores, parse_review_scores, score_llava_bench_reviews
from smoothguard.eval.mm_safety import asr_scores
from smoothguard.eval.pope import parse_yes_no, pope_metrics, pope_scores, score_pope_answers
from smoothguard.eval.runner import GuardSpec, evaluate
from smoothguard.eval.sweep import run_sweep

__all__ = [
    "REFUSAL_PHRASES",
    "Benchmark",
    "DataError",
    "EvalItem",
    "GuardModelJudge",
    "GuardSpec",
    "Judge",
    "JudgeError",
    "JudgeOptions",
    "OpenAIJudge",
    "RefusalJudge",
    "RunConflictError",
    "SafetyCase",
    "SafetyJudge",
    "Verdict",
    "asr_scores",
    "benchmark_names",
    "evaluate",
    "get_benchmark",
    "llava_bench_scores",
    "make_judge",
    "parse_review_scores",
    "parse_verdict",
    "parse_yes_no",
    "pope_metrics",
    "pope_scores",
    "register_benchmark",
    "register_judge",
    "run_sweep",
    "score_llava_bench_reviews",
    "score_pope_answers",
]
