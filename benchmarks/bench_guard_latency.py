"""Latency of SmoothGuard's batched generation against the undefended model and the
one-call-per-copy loop of the authors' scripts, measured side by side in one run.

    python benchmarks/bench_guard_latency.py        # random LLaVA, 576 image tokens (LLaVA-1.5's), CPU
    python benchmarks/bench_guard_latency.py --image-size 32 --patch-size 8 --hidden-size 32  # test-size

Arms (same model, image, prompt and number of new tokens; every answer is forced to
``--new-tokens`` tokens so that arms generate equal work):
  (a) one undefended generation (clean input only);
  (b) SmoothGuard, num_copies=10: all 11 candidates in ONE generate call;
  (c) the same 11 candidate inputs, one generate call each.
Prints the median of ``--repeats`` runs per arm, the ratios b/a and c/b, and SmoothGuard's
embed + cluster time (packaged all-MiniLM-L6-v2 on the CPU) beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import transformers

from smoothguard import SmoothGuard, load_model
from smoothguard.models.tiny import save_tiny_llava


def timed(fn: Callable[[], object]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_medians(arms: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per arm; the arms run in turn each round (after one warm-up round), so
    that drift in the machine's load affects all of them alike."""
    for fn in arms.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, fn in arms.items():
            samples[name].append(timed(fn))
    return {name: statistics.median(values) for name, values in samples.items()}


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=336, help="vision input side (LLaVA-1.5: 336)")
    parser.add_argument("--patch-size", type=int, default=14, help="(LLaVA-1.5: 14 -> 576 image tokens)")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128, help="(paper: 128 for POPE, MM-SafetyBench)")
    parser.add_argument("--num-copies", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    with tempfile.TemporaryDirectory() as folder:
        save_tiny_llava(
            folder,
            image_size=args.image_size,
            patch_size=args.patch_size,
            hidden_size=args.hidden_size,
            num_layers=args.layers,
        )
        model = load_model(folder, device=args.device, dtype=args.dtype)
    generation = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
    image = torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(0))
    prompt = "What is in the image?"
    baseline = SmoothGuard(model, num_copies=0)
    guard = SmoothGuard(model, sigma=0.1, num_copies=args.num_copies)
    queries = guard.candidates(guard.prepare([prompt], [image])[0], range(args.num_copies))
    guard.embedder  # load once, outside the timings  # noqa: B018

    results = []
    medians = interleaved_medians(
        {
            "a": lambda: model.generate(queries[:1], **generation),
            "b": lambda: model.generate(queries, **generation),
            "c": lambda: [model.generate([q], **generation) for q in queries],
            "undefended_total": lambda: baseline.generate(prompt, image=image, **generation),
            "defended_total": lambda: results.append(guard.generate(prompt, image=image, **generation)),
        },
        args.repeats,
    )
    undefended, batched, loop = medians["a"], medians["b"], medians["c"]
    undefended_total, defended_total = medians["undefended_total"], medians["defended_total"]
    stage = {key: statistics.median(r.timings[key] for r in results[1:]) for key in ("embed", "cluster")}

    tokens = (args.image_size // args.patch_size) ** 2
    figures = {
        "machine": machine(),
        "model": f"random LLaVA, {tokens} image tokens, hidden {args.hidden_size}, {args.layers} layers, "
        f"{model.describe()['dtype']}",
        "candidates": args.num_copies + 1,
        "new_tokens": args.new_tokens,
        "a_undefended_generate_s": undefended,
        "b_smoothguard_generate_s": batched,
        "c_one_call_per_copy_s": loop,
        "embed_s": stage["embed"],
        "cluster_s": stage["cluster"],
        "undefended_end_to_end_s": undefended_total,
        "smoothguard_end_to_end_s": defended_total,
        "ratio_b_over_a": batched / undefended,
        "ratio_c_over_b": loop / batched,
        "ratio_end_to_end": defended_total / undefended_total,
    }
    print(f"machine: {figures['machine']}")
    print(f"model:   {figures['model']}; {figures['candidates']} candidates x {args.new_tokens} new tokens")
    print(f"generation stage (median of {args.repeats} interleaved runs):")
    print(f"  (a) undefended, 1 candidate         {undefended * 1000:9.1f} ms")
    print(f"  (b) SmoothGuard, 1 batched call     {batched * 1000:9.1f} ms   b/a = {figures['ratio_b_over_a']:.2f}x")
    print(f"  (c) one generate call per copy      {loop * 1000:9.1f} ms   c/b = {figures['ratio_c_over_b']:.2f}x")
    print(
        f"  SmoothGuard embed + cluster         {(stage['embed'] + stage['cluster']) * 1000:9.1f} ms "
        f"(embed {stage['embed'] * 1000:.1f}, cluster {stage['cluster'] * 1000:.1f})"
    )
    print("end to end (load + preprocess + generate [+ embed + cluster]):")
    print(f"  undefended                          {undefended_total * 1000:9.1f} ms")
    print(
        f"  SmoothGuard                         {defended_total * 1000:9.1f} ms   ratio = "
        f"{figures['ratio_end_to_end']:.2f}x"
    )
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
