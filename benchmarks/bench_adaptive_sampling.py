"""Adaptive sampling against the paper's full draw, side by side on the testbed.

    python benchmarks/bench_adaptive_sampling.py                     # 60 testbed-pope items, 3 sigmas
    python benchmarks/bench_adaptive_sampling.py --items 120 --sigmas 0.1 --round-size 3 --json

For each sigma (normalized space unless ``--noise-space``), every item is guarded twice with the same
seed: (full) all ``--num-copies`` copies, as the paper; (adaptive) ``SmoothGuard(adaptive=...)``, which
answers the copies in rounds and stops once the majority cluster's share is decided. The adaptive copies
are the first ones of the full draw (same noise), so the answers are directly comparable. Prints per
sigma: mean copies used, the share of items whose adaptive answer equals the full answer (exact text and
parsed yes/no), and generation seconds per item for both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import transformers

from smoothguard import AdaptiveSampling, SmoothGuard, load_model
from smoothguard.certify import YesNoParser
from smoothguard.embed import MiniLMEmbedder
from smoothguard.eval.base import get_benchmark
from smoothguard.noise import parse_sigmas


def run_arm(guard: SmoothGuard, items: list, max_new_tokens: int, per_call: int) -> tuple[list, float]:
    """Guard results for ``items`` (``per_call`` items per ``generate_batch``) and seconds per item."""
    results = []
    started = time.perf_counter()
    for start in range(0, len(items), per_call):
        batch = items[start : start + per_call]
        results += guard.generate_batch(
            [i.prompt for i in batch], [i.image for i in batch], max_new_tokens=max_new_tokens
        )
    return results, (time.perf_counter() - started) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=60, help="first N testbed-pope items (default 60)")
    parser.add_argument("--sigmas", default="0.1,0.25,0.5", help="comma-separated (default 0.1,0.25,0.5)")
    parser.add_argument("--noise-space", default="normalized")
    parser.add_argument("--num-copies", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--round-size", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--per-call", type=int, default=4, help="items per generate_batch call (default 4)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    model = load_model("testbed", device="cpu")
    items = get_benchmark("testbed-pope").load_items(None)[: args.items]
    embedder = MiniLMEmbedder()
    plan = AdaptiveSampling(alpha=args.alpha, round_size=args.round_size)
    yes_no = YesNoParser()
    rows = []
    for sigma in parse_sigmas(args.sigmas, args.noise_space):
        common = {"sigma": sigma, "num_copies": args.num_copies, "noise_space": args.noise_space, "embedder": embedder}
        for guard in (SmoothGuard(model, **common), SmoothGuard(model, adaptive=plan, **common)):
            run_arm(guard, items[: args.per_call], args.max_new_tokens, args.per_call)  # warm-up
        full, full_s = run_arm(SmoothGuard(model, **common), items, args.max_new_tokens, args.per_call)
        adaptive, adaptive_s = run_arm(
            SmoothGuard(model, adaptive=plan, **common), items, args.max_new_tokens, args.per_call
        )
        pairs = list(zip(full, adaptive, strict=True))
        rows.append(
            {
                "sigma": sigma,
                "items": len(items),
                "full_copies": args.num_copies,
                "adaptive_mean_copies": sum(a.copies_used for a in adaptive) / len(adaptive),
                "text_agreement": sum(f.text == a.text for f, a in pairs) / len(pairs),
                "yes_no_agreement": sum(yes_no(f.text) == yes_no(a.text) for f, a in pairs) / len(pairs),
                "full_seconds_per_item": full_s,
                "adaptive_seconds_per_item": adaptive_s,
            }
        )

    print(
        f"testbed-pope, {len(items)} items, {args.noise_space} noise, {args.num_copies} copies + clean; adaptive: "
        f"alpha {args.alpha}, rounds of {args.round_size} (per-look level {plan.level(args.num_copies):.4f})"
    )
    print(
        f"{'sigma':>6} {'full copies':>11} {'adaptive mean':>13} {'text agree':>10} {'yes/no agree':>12} "
        f"{'full s/item':>11} {'adaptive s/item':>15}"
    )
    for row in rows:
        print(
            f"{row['sigma']:>6g} {row['full_copies']:>11} {row['adaptive_mean_copies']:>13.2f} "
            f"{row['text_agreement']:>10.3f} {row['yes_no_agreement']:>12.3f} "
            f"{row['full_seconds_per_item']:>11.3f} {row['adaptive_seconds_per_item']:>15.3f}"
        )
    threads = torch.get_num_threads()
    where = f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {threads}, torch {torch.__version__}"
    print(f"({where}; seconds include generate, embed and cluster)")
    if args.json:
        print(json.dumps({"machine": where, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
