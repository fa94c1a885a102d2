"""``smoothguard certify``: certified yes/no answers (testbed, POPE) or certified refusals (testbed-safety), and
the certified-accuracy table."""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from smoothguard.certify.core import DEFAULT_BATCH_SIZE
from smoothguard.cli.options import (
    add_benchmark_options,
    add_guard_options,
    add_model_options,
    benchmark_options,
    guard_config,
    model_options,
)
from smoothguard.config import GuardConfig
from smoothguard.errors import ConfigError, check_output_folder
from smoothguard.noise import parse_sigmas
from smoothguard.stats import validate_alpha

#: Guard options that do not apply to certification (no vote: every copy is a sample).
_NOT_CERTIFY = ("sigma", "num_copies", "num_clusters", "embedder", "adaptive", "purify_clean", "vote", "parser")

#: ``--benchmark`` -> the registered benchmark whose items are certified, and the parser of its answers.
BENCHMARKS = {
    "testbed": ("testbed-pope", "yes-no"),
    "pope": ("pope", "yes-no"),
    "testbed-safety": ("testbed-safety", "refusal"),
}


def register(commands: Any) -> None:
    """Add ``certify`` to the ``smoothguard`` command."""
    parser = commands.add_parser(
        "certify",
        help="certified yes/no answers or refusals (randomized smoothing): radius per item, certified accuracy",
        description="Cohen et al.'s CERTIFY for every item: n0 noisy copies select the answer, n more bound its "
        "probability (Clopper-Pearson at alpha); the answer is certified within L2 radius sigma * Phi^-1(p_lower) "
        "in the noise space's units, or abstained. Writes OUT/sigma-S/records.jsonl per sigma, then "
        "OUT/summary.json and the certified-accuracy table as CSV and PNG. Rerun the same command to resume.",
    )
    add_model_options(parser)
    parser.add_argument(
        "--benchmark",
        required=True,
        choices=sorted(BENCHMARKS),
        help="testbed: testbed-pope's yes/no items; testbed-safety: restricted requests on clean scenes, certified "
        "refusal (the refusal parser)",
    )
    parser.add_argument("--data", type=Path, help="pope: LLaVA's POPE folder (see the README)")
    parser.add_argument(
        "--sigmas",
        "--sigma",
        default="0.25",
        help="noise std in --noise-space units; comma-separated for several (default 0.25)",
    )
    parser.add_argument("--n0", type=int, default=100, help="selection copies per item (default 100)")
    parser.add_argument("--n", type=int, default=1000, help="estimation copies per item (default 1000)")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability (default 0.001)")
    parser.add_argument("--radii", default="0,0.1,0.25,0.5,1", help="table radii (default 0,0.1,0.25,0.5,1)")
    add_guard_options(
        parser, defaults=GuardConfig(noise_space="pixel", batch_size=DEFAULT_BATCH_SIZE), exclude=_NOT_CERTIFY
    )
    parser.add_argument("--max-new-tokens", type=int, help="default: the benchmark's (testbed 8, pope 128)")
    parser.add_argument("--limit", type=int, help="only the first K items")
    parser.add_argument("--out", type=Path, help="output folder (default runs/certify/BENCH/MODEL)")
    parser.add_argument("--json", action="store_true", help="print the summary (with the table) as JSON")
    add_benchmark_options(parser)
    parser.set_defaults(precheck=_check, run=_run_certify)


def _check(args: argparse.Namespace) -> None:
    args.sigmas = parse_sigmas(args.sigmas, args.noise_space)
    args.radii = _numbers(args.radii, "--radii")
    for name in ("n0", "n", "limit", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    validate_alpha(args.alpha)
    if min(args.radii) < 0:
        raise ConfigError(f"--radii must be >= 0, got {args.radii}")
    args.guard = guard_config(args, sigma=args.sigmas[0])
    model_name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(args.model).name)
    args.out = check_output_folder(args.out or Path("runs") / "certify" / args.benchmark / model_name, "--out")


def _run_certify(args: argparse.Namespace) -> int:
    from smoothguard.certify.run import certify_items, format_table
    from smoothguard.eval.base import get_benchmark
    from smoothguard.models import load_model

    name, parser = BENCHMARKS[args.benchmark]
    bench = get_benchmark(name)
    if args.data and not bench.needs_data:
        raise ConfigError(f"--data is for --benchmark pope; {bench.name} makes its own items")
    # as text, as the settings record them (testbed-safety's --universal-image also takes a,b,c)
    options = {key: str(value) for key, value in benchmark_options(args).items()}
    bench.check_options(args.data, options)
    items = bench.load_items(args.data, **options)[: args.limit]
    settings = {
        "benchmark": bench.name,
        "data": str(args.data.resolve()) if args.data else None,
        "options": options,
        "model": str(Path(args.model).resolve()) if Path(args.model).exists() else args.model,
        "dtype": args.dtype,
        "parser": parser,
        "n0": args.n0,
        "n": args.n,
        "alpha": args.alpha,
        "max_new_tokens": args.max_new_tokens or bench.max_new_tokens,
    }
    out = args.out
    summary = certify_items(
        items,
        lambda: load_model(args.model, **model_options(args)),
        out,
        guard=args.guard,
        sigmas=args.sigmas,
        settings=settings,
        radii=args.radii,
        progress=True,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print("\n".join(format_table(summary)))
    print(f"[certify] {len(items)} items, n0={args.n0} n={args.n} alpha={args.alpha}; {out}", file=sys.stderr)
    return 0


def _numbers(text: str, flag: str) -> list[float]:
    try:
        numbers = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        numbers = []
    if not numbers or not all(math.isfinite(number) for number in numbers):
        raise ConfigError(f"{flag} takes comma-separated numbers, e.g. 0.12,0.25; got {text!r}")
    return numbers
