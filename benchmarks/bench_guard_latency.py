"""The whole cost of SmoothGuard against the undefended model, measured side by side in one run: the
generation stage (batched against one call per copy) and end to end, with the share of every stage.

    python benchmarks/bench_guard_latency.py --threads 1                  # random LLaVA, 576 image tokens, CPU
    python benchmarks/bench_guard_latency.py --image-size 32 --patch-size 8 --hidden-size 32  # test-size
    python benchmarks/bench_guard_latency.py --testbed --threads 1        # the shipped testbed, yes/no answers

Arms (same model, image, prompt and number of new tokens; with a random model every answer is forced to
``--new-tokens`` tokens so that arms generate equal work; the testbed answers as it likes):
  (a) one undefended generation (clean input only);
  (b) SmoothGuard, num_copies=10: all 11 candidates in ONE generate call;
  (c) the same 11 candidate inputs, one generate call each;
  end to end: ``guard.generate`` undefended (num_copies=0) and defended, from the image file's pixels to
  the answer, with the defended run's stages (preprocess: loading, tokenising, noise and preprocessing;
  generate; embed; cluster) as shares of its total.
Prints the median of ``--repeats`` interleaved runs per arm, the ratios b/a, c/b and end to end, and the
machine with its thread count. ``measure`` is shared with ``bench_gpu.py``.
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
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import transformers

from smoothguard import SmoothGuard, load_model
from smoothguard.models.auto import set_threads
from smoothguard.models.base import MLLMAdapter
from smoothguard.models.tiny import save_tiny_llava

STAGES = ("preprocess", "generate", "embed", "cluster")


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
    threads = torch.get_num_threads()
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs, torch threads {threads}, torch {torch.__version__}"


def measure(
    model: MLLMAdapter,
    image: Any,
    prompt: str,
    *,
    new_tokens: int,
    num_copies: int,
    repeats: int,
    forced: bool,
    description: str,
) -> dict[str, Any]:
    """Every arm on ``model``; returns the figures (seconds, ratios, stage shares) as a dict."""
    generation: dict[str, Any] = {"max_new_tokens": new_tokens}
    if forced:
        generation["min_new_tokens"] = new_tokens
    baseline = SmoothGuard(model, num_copies=0)
    guard = SmoothGuard(model, num_copies=num_copies)
    queries = guard.candidates(guard.prepare([prompt], [image])[0], range(num_copies))
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
        repeats,
    )
    runs = results[1:]  # the first is the warm-up
    stages = {stage: statistics.median(r.timings[stage] for r in runs) for stage in STAGES}
    total = statistics.median(r.timings["total"] for r in runs)
    figures = {
        "machine": machine(),
        "model": description,
        "candidates": num_copies + 1,
        "new_tokens": new_tokens,
        "forced_length": forced,
        "repeats": repeats,
        "a_undefended_generate_s": medians["a"],
        "b_smoothguard_generate_s": medians["b"],
        "c_one_call_per_copy_s": medians["c"],
        "undefended_end_to_end_s": medians["undefended_total"],
        "smoothguard_end_to_end_s": medians["defended_total"],
        "ratio_b_over_a": medians["b"] / medians["a"],
        "ratio_c_over_b": medians["c"] / medians["b"],
        "ratio_end_to_end": medians["defended_total"] / medians["undefended_total"],
        "defended_stage_s": stages,
        "defended_stage_share": {stage: seconds / total for stage, seconds in stages.items()},
        "outside_generation_share": 1 - stages["generate"] / total,
        "distinct_answers": statistics.median(r.num_distinct for r in runs),
    }
    return figures


def report(figures: dict[str, Any]) -> None:
    ms = 1000
    print(f"machine: {figures['machine']}")
    print(
        f"model:   {figures['model']}; {figures['candidates']} candidates x {figures['new_tokens']} new tokens"
        f"{' (forced)' if figures['forced_length'] else ''}; median of {figures['repeats']} interleaved runs"
    )
    print("generation stage:")
    print(f"  (a) undefended, 1 candidate         {figures['a_undefended_generate_s'] * ms:9.1f} ms")
    print(
        f"  (b) SmoothGuard, 1 batched call     {figures['b_smoothguard_generate_s'] * ms:9.1f} ms   "
        f"b/a = {figures['ratio_b_over_a']:.2f}x"
    )
    print(
        f"  (c) one generate call per copy      {figures['c_one_call_per_copy_s'] * ms:9.1f} ms   "
        f"c/b = {figures['ratio_c_over_b']:.2f}x"
    )
    print("end to end (image -> answer):")
    print(f"  undefended                          {figures['undefended_end_to_end_s'] * ms:9.1f} ms")
    print(
        f"  SmoothGuard                         {figures['smoothguard_end_to_end_s'] * ms:9.1f} ms   "
        f"ratio = {figures['ratio_end_to_end']:.2f}x"
    )
    shares = ", ".join(
        f"{stage} {figures['defended_stage_share'][stage]:.1%} ({figures['defended_stage_s'][stage] * ms:.1f} ms)"
        for stage in STAGES
    )
    print(f"  SmoothGuard's stages: {shares}")
    print(
        f"  outside the generation stage: {figures['outside_generation_share']:.1%} of the defended total; "
        f"{figures['distinct_answers']:g} distinct answers (median)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testbed", action="store_true", help="the shipped testbed and a yes/no question")
    parser.add_argument("--image-size", type=int, default=336, help="vision input side (LLaVA-1.5: 336)")
    parser.add_argument("--patch-size", type=int, default=14, help="(LLaVA-1.5: 14 -> 576 image tokens)")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=None, help="default: 128 (random model), 8 (testbed)")
    parser.add_argument("--num-copies", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    if args.threads:
        set_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    if args.testbed:
        from smoothguard.testbed.benchmarks import TestbedPopeBenchmark

        model = load_model("testbed", device=args.device, dtype=args.dtype)
        item = TestbedPopeBenchmark().load_items(None, num_scenes=1)[0]
        image, prompt, forced = item.image, item.prompt, False
        new_tokens = args.new_tokens or 8
        description = f"the shipped testbed ({model.describe()['dtype']}), yes/no question {prompt!r}"
    else:
        with tempfile.TemporaryDirectory() as folder:
            save_tiny_llava(
                folder,
                image_size=args.image_size,
                patch_size=args.patch_size,
                hidden_size=args.hidden_size,
                num_layers=args.layers,
            )
            model = load_model(folder, device=args.device, dtype=args.dtype)
        image = torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(0))
        prompt, forced = "What is in the image?", True
        new_tokens = args.new_tokens or 128
        tokens = (args.image_size // args.patch_size) ** 2
        description = (
            f"random LLaVA, {tokens} image tokens, hidden {args.hidden_size}, {args.layers} layers, "
            f"{model.describe()['dtype']}, a 640x480 image"
        )
    figures = measure(
        model,
        image,
        prompt,
        new_tokens=new_tokens,
        num_copies=args.num_copies,
        repeats=args.repeats,
        forced=forced,
        description=description,
    )
    report(figures)
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
