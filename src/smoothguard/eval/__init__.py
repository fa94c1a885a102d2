"""Evaluation: benchmarks, judges, a resumable runner, sigma sweeps and plots.

Benchmarks are registered by name; ``smoothguard eval NAME`` and ``smoothguard sweep NAME`` run any
registered one. Built in: ``pope``, ``mm-safety``, ``llava-bench``; the testbed adds ``testbed-pope`` and
``testbed-safety`` through the entry-point group ``smoothguard.benchmarks``, as any plug-in does.

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

``load_items`` keyword options come from the command line (``--option size=50``) and are passed only when
given; they are part of a run's settings. A benchmark may instead declare them once, as a dataclass of
``option(help, kind)`` fields (``Options = MyOptions``; ``load_items(self, data_dir, **options)`` reads them
with ``self.parse_options(options)``): the built-ins do, and ``eval``, ``sweep`` and ``certify`` make a flag
of each (``--questions``, ``--variant``, ...). A package can also register through the entry-point group
``smoothguard.benchmarks`` (name -> factory); every lookup by name goes through ``smoothguard.registry``.

Records (one JSON object per item, ``records.jsonl``): ``id``, ``question_id``, ``prompt``, ``text``
(the answer), ``image``, ``meta``, ``model_id``, ``defense`` (candidates and cluster statistics, or
``None``), ``timings`` (seconds, per batch, with ``batch_queries``), ``judge`` (identity), plus the
benchmark's ``assess`` fields. POPE and LLaVA-Bench records are also valid LLaVA answer/review files.
"""

from smoothguard.lazy import lazy_exports

_EXPORTS = {
    "Benchmark": "smoothguard.eval.base",
    "DataError": "smoothguard.errors",
    "EvalItem": "smoothguard.records",
    "GuardModelJudge": "smoothguard.eval.judges",
    "GuardSpec": "smoothguard.eval.runner",
    "Judge": "smoothguard.eval.judges",
    "JudgeError": "smoothguard.errors",
    "JudgeOptions": "smoothguard.eval.judges",
    "OpenAIJudge": "smoothguard.eval.judges",
    "REFUSAL_PHRASES": "smoothguard.answers",
    "RefusalJudge": "smoothguard.eval.judges",
    "RunConflictError": "smoothguard.errors",
    "SafetyCase": "smoothguard.eval.judges",
    "SafetyJudge": "smoothguard.eval.judges",
    "Verdict": "smoothguard.eval.judges",
    "asr_scores": "smoothguard.eval.mm_safety",
    "benchmark_names": "smoothguard.eval.base",
    "evaluate": "smoothguard.eval.runner",
    "get_benchmark": "smoothguard.eval.base",
    "llava_bench_scores": "smoothguard.eval.llava_bench",
    "make_judge": "smoothguard.eval.judges",
    "parse_review_scores": "smoothguard.eval.llava_bench",
    "parse_verdict": "smoothguard.eval.judges",
    "parse_yes_no": "smoothguard.answers",
    "pope_metrics": "smoothguard.eval.pope",
    "pope_scores": "smoothguard.eval.pope",
    "register_benchmark": "smoothguard.eval.base",
    "register_judge": "smoothguard.eval.judges",
    "run_sweep": "smoothguard.eval.sweep",
    "score_llava_bench_reviews": "smoothguard.eval.llava_bench",
    "score_pope_answers": "smoothguard.eval.pope",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
