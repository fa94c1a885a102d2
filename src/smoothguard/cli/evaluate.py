"""``smoothguard eval``, ``smoothguard sweep`` and ``smoothguard score`` (a module named for the verb, not
``eval``, which would shadow the builtin)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smoothguard.cli.options import (
    add_benchmark_options,
    add_guard_options,
    add_model_options,
    benchmark_options,
    guard_config,
    model_options,
)
from smoothguard.errors import ConfigError, check_output_folder
from smoothguard.eval.base import benchmark_names
from smoothguard.noise import parse_sigmas

if TYPE_CHECKING:
    from smoothguard.eval.runner import GuardSpec


def register(commands: Any) -> None:
    """Add ``eval``, ``sweep`` and ``score`` to the ``smoothguard`` command."""
    evaluate = commands.add_parser(
        "eval",
        help="run a benchmark (pope, mm-safety, llava-bench, ...) defended or not; rerun to resume",
        description="Answer every item of a benchmark through SmoothGuard (or undefended), judge and score the "
        "answers. Records go to RUN_DIR/records.jsonl as produced; rerunning the same command resumes.",
    )
    _add_run_options(evaluate, lambda parser: add_guard_options(parser, defense=True))
    evaluate.add_argument("--shard", help="i/n: answer items i, i+n, i+2n, ... (0 <= i < n), e.g. one per GPU")
    evaluate.add_argument("--out", type=Path, help="run folder (default runs/BENCH/MODEL/undefended|sigma-S)")
    evaluate.set_defaults(precheck=_check, run=_run_eval)

    sweep = commands.add_parser(
        "sweep",
        help="run a benchmark at several sigmas and plot its utility or ASR against sigma",
        description="One defended run per sigma in OUT/sigma-S/ (finished runs are reused), then "
        "OUT/utility-vs-sigma.{png,csv} or OUT/asr-vs-sigma.{png,csv}.",
    )
    _add_run_options(sweep, lambda parser: add_guard_options(parser, exclude=("sigma",), defense=True))
    sweep.add_argument("--sigma", type=float, help=argparse.SUPPRESS)  # only to say that sweep takes --sigmas
    sweep.add_argument("--sigmas", required=True, help="comma-separated, e.g. 0,0.05,0.1,0.15,0.2,0.3,0.4,0.5")
    sweep.add_argument("--out", type=Path, help="sweep folder (default runs/BENCH/MODEL/sweep)")
    sweep.set_defaults(precheck=_check_sweep, run=_run_sweep)

    score = commands.add_parser("score", help="score answer or review files as the published scorers do")
    which = score.add_subparsers(dest="scored", required=True, metavar="BENCH")
    pope = which.add_parser("pope", help="POPE answers (LLaVA format) -> accuracy, precision, recall, F1, yes-ratio")
    pope.add_argument("answers", type=Path, help="answer file: one JSON object a line with question_id and text")
    pope.add_argument("--questions", type=Path, required=True, help="question file (llava_pope_test.jsonl)")
    pope.add_argument("--labels", type=Path, required=True, help="folder of coco_pope_<split>.json label files")
    pope.add_argument("--json", action="store_true", help="print the scores as JSON")
    pope.set_defaults(run=_run_score_pope)
    llava = which.add_parser("llava-bench", help="LLaVA-Bench judge reviews -> relative scores per category")
    llava.add_argument("reviews", type=Path, help="review file (LLaVA's format, or a llava-bench run's records.jsonl)")
    llava.add_argument(
        "--exclude-unparseable", action="store_true", help="leave unparseable reviews out (default: -1/-1)"
    )
    llava.add_argument("--json", action="store_true", help="print the scores as JSON")
    llava.set_defaults(run=_run_score_llava)


def _add_run_options(parser: argparse.ArgumentParser, guard_options: Callable[[argparse.ArgumentParser], None]) -> None:
    parser.add_argument("benchmark", metavar="BENCH", help=f"one of: {', '.join(benchmark_names())}")
    add_model_options(parser)
    parser.add_argument("--data", type=Path, help="the benchmark's data folder, in its published layout (README)")
    guard_options(parser)
    parser.add_argument("--max-new-tokens", type=int, help="default: the benchmark's (128; llava-bench 256)")
    parser.add_argument("--limit", type=int, help="only the first N items")
    parser.add_argument(
        "--questions-per-batch",
        type=int,
        default=4,
        help="items per generate call, all their copies together (default 4)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    judge = parser.add_argument_group("judge")
    judge.add_argument(
        "--judge", help="refusal | complied | guard-model | openai (default: the benchmark's; mm-safety: refusal)"
    )
    judge.add_argument("--judge-model", help="guard-model: the model folder; openai: the endpoint's model name")
    judge.add_argument("--judge-url", help="openai: API base URL, e.g. https://api.openai.com/v1")
    judge.add_argument(
        "--judge-key-env",
        default="OPENAI_API_KEY",
        help="openai: variable holding the key ('' for none; default OPENAI_API_KEY)",
    )
    add_benchmark_options(parser)


def _check(args: argparse.Namespace) -> None:
    args.guard = guard_config(args)
    if args.out:
        check_output_folder(args.out, "--out")
    args.shard = parse_shard(args.shard) if getattr(args, "shard", None) else None


def _check_sweep(args: argparse.Namespace) -> None:
    if args.sigma is not None:
        raise ConfigError("sweep takes --sigmas (a list), not --sigma")
    args.sigmas = parse_sigmas(args.sigmas)
    args.guard = guard_config(args, sigma=args.sigmas[0])
    if args.out:
        check_output_folder(args.out, "--out")


def _run_eval(args: argparse.Namespace) -> int:
    from smoothguard.eval.runner import evaluate

    spec = _spec(args).resolved()
    out = args.out or _default_out(args, "undefended" if not spec.defended else f"sigma-{spec.guard.sigma:g}")
    summary = evaluate(args.benchmark, spec, out, shard=args.shard, **_common(args))
    _print_summary(summary, args.json, f"run folder {summary['run_folder']}")
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    from smoothguard.eval.report import score_table
    from smoothguard.eval.sweep import run_sweep

    spec = _spec(args)
    result = run_sweep(args.benchmark, spec, args.sigmas, args.out or _default_out(args, "sweep"), **_common(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    table = {
        f"sigma {row['sigma']:g} ({row['noise_space']})": {k: v for k, v in row.items() if "." in k}
        for row in result["rows"]
    }
    print("\n".join(score_table(table)))
    print(f"[sweep] plot {result['plot']}, data {result['csv']}", file=sys.stderr)
    return 0


def _run_score_pope(args: argparse.Namespace) -> int:
    from smoothguard.eval.pope import score_pope_answers

    scores = score_pope_answers(args.answers, args.questions, args.labels)
    if args.json:
        print(json.dumps(scores, indent=2))
        return 0
    percent = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    header = (
        f"{'split':<12} {'n':>6} "
        + " ".join(f"{c:>9}" for c in percent)
        + "".join(f" {c:>5}" for c in ("tp", "fp", "tn", "fn"))
    )
    print(header)
    for split, m in scores.items():
        counts = "".join(f" {m[c]:>5}" for c in ("tp", "fp", "tn", "fn")) if "tp" in m else ""
        print(f"{split:<12} {m['n']:>6} " + " ".join(f"{100 * m[c]:>9.2f}" for c in percent) + counts)
    print("(rates in percent; mean = unweighted mean over the splits)", file=sys.stderr)
    return 0


def _run_score_llava(args: argparse.Namespace) -> int:
    from smoothguard.eval.llava_bench import score_llava_bench_reviews

    scores = score_llava_bench_reviews(args.reviews, exclude_unparseable=args.exclude_unparseable)
    if args.json:
        print(json.dumps(scores, indent=2))
        return 0
    print(f"{'category':<10} {'relative':>9} {'reference':>10} {'model':>7} {'n':>4} {'unparseable':>12}")
    for group, m in scores.items():
        relative = "—" if m["relative_score"] is None else f"{m['relative_score']:.1f}"
        print(
            f"{group:<10} {relative:>9} {10 * m['reference_mean']:>10.1f} {10 * m['model_mean']:>7.1f} "
            f"{m['n']:>4} {m['unparseable']:>12}"
        )
    print("(reference and model: mean judge score x 10, as LLaVA's summarize_gpt_review prints them)", file=sys.stderr)
    return 0


def _spec(args: argparse.Namespace) -> GuardSpec:
    from smoothguard.eval.runner import GuardSpec

    options = model_options(args)
    loading = {key: options[key] for key in ("device_map", "attn_implementation", "compile_decode") if options[key]}
    return GuardSpec(model=args.model, dtype=args.dtype, device=args.device, guard=args.guard, loading=loading)


def _common(args: argparse.Namespace) -> dict[str, Any]:
    """The ``evaluate`` keywords shared by ``eval`` and ``sweep``."""
    from smoothguard.eval.judges import JudgeOptions, make_judge

    judge = None
    if args.judge:
        judge_options = JudgeOptions(
            model=args.judge_model, url=args.judge_url, key_env=args.judge_key_env or None, device=args.device
        )
        judge = make_judge(args.judge, judge_options)
    return {
        "data": args.data,
        "options": benchmark_options(args),
        "judge": judge,
        "limit": args.limit,
        "questions_per_batch": args.questions_per_batch,
        "max_new_tokens": args.max_new_tokens,
    }


def _default_out(args: argparse.Namespace, leaf: str) -> Path:
    model = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(args.model).name or args.model)
    return Path("runs") / args.benchmark / model / leaf


def _print_summary(summary: dict[str, Any], as_json: bool, where: str) -> None:
    from smoothguard.eval.report import score_table

    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print("\n".join(score_table(summary["scores"])))
    items = summary["items"]
    state = "complete" if summary["complete"] else "incomplete, rerun to resume"
    print(f"[{summary['benchmark']}] {items['done']}/{items['selected']} items ({state}); {where}", file=sys.stderr)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> ``(i, n)``: this process takes items i, i + n, i + 2n, ..."""
    index, _, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        shard = (-1, 0)
    if not 0 <= shard[0] < shard[1]:
        raise ConfigError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return shard
