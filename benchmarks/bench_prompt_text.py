"""Cost of ``prompt_text`` (a prompt's token ids with its media placeholder expanded) before and after
processor-free token counting, side by side in one run, 1 thread by default.

    python benchmarks/bench_prompt_text.py
    python benchmarks/bench_prompt_text.py --repeats 200 --json

Arms, per model and medium (same prompt, same medium):
  before: what ``prompt_text`` ran until issue 11, kept here only as the reference: the chat prompt
          through the HF processor WITH the full image / waveform (the processor resizes, crops and
          normalises the image, or computes the log-mel features, only to count the media tokens);
  after:  ``adapter.prompt_text``: the media token count from the medium's size, the chat prompt's
          ids from the adapter's per-prompt cache (the steady state of a benchmark split, which asks
          the same prompt of every medium);
  cold:   ``adapter.prompt_text`` with that cache cleared before every call (a new prompt each time).
Every arm's output is checked equal to the reference's before timing. Models: the shipped testbed
(LLaVA, 64 px, 64 image tokens), a random LLaVA with LLaVA-1.5's processor shape (336 px / 14 px,
576 tokens), a random Qwen2-VL with Qwen2-VL's real pixel limits (3136 .. 12845056) and a random
Qwen2-Audio; images 640x480 and 64x64, clips 5 s and 30 s. Prints the median per arm (interleaved
rounds, after one warm-up round) and the ratio before / after.
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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import transformers

from smoothguard import load_model
from smoothguard.models.image import TEXT_KEYS, to_uint8_image
from smoothguard.models.tiny import save_tiny_llava, save_tiny_qwen2_audio, save_tiny_qwen_vl

PROMPT = "Is there a red circle in the image? Answer yes or no."
AUDIO_PROMPT = "What do you hear? Answer in one word."


def rendered_prompt(adapter, prompt: str, waveform) -> str:
    """``prompt`` after the clip ``waveform`` in the processor's chat template (the clip itself, not a stand-in)."""
    content = [{"type": "audio", "audio": waveform}, {"type": "text", "text": prompt}]
    conversation = [{"role": "user", "content": content}]
    return adapter.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)


def reference_prompt_text(adapter, prompt: str, medium: torch.Tensor) -> dict[str, torch.Tensor]:
    """The processor path ``prompt_text`` took before issue 11 (image and audio adapters)."""
    if adapter.modality == "audio":
        waveform = medium.detach().float().cpu().numpy()
        encoded = adapter.processor(
            text=rendered_prompt(adapter, adapter.checked_prompt(prompt), waveform),
            audio=waveform,
            sampling_rate=adapter.sampling_rate,
            return_tensors="pt",
        )
        return {key: encoded[key] for key in ("input_ids", "attention_mask")}
    text = adapter.chat_prompt(adapter.checked_prompt(prompt))
    encoded = adapter.processor(text=text, images=to_uint8_image(medium), return_tensors="pt")
    return {key: encoded[key] for key in TEXT_KEYS if key in encoded}


def interleaved_medians(arms: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per arm; the arms run in turn each round (after one warm-up round)."""
    for fn in arms.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, fn in arms.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def check_equal(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert set(ours) == set(reference), (sorted(ours), sorted(reference))
    for key, value in reference.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key


def cold(adapter, prompt: str, medium: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        adapter.prompt_ids.cache_clear()
        return adapter.prompt_text(prompt, medium)

    return run


def models(folder: Path) -> dict[str, object]:
    return {
        "testbed llava (64 tokens)": load_model("testbed", device="cpu"),
        "llava-1.5 shape (576 tokens)": load_model(
            save_tiny_llava(folder / "llava", image_size=336, patch_size=14), device="cpu"
        ),
        "qwen2-vl (real pixel limits)": load_model(
            save_tiny_qwen_vl(folder / "qwen2-vl", min_pixels=3136, max_pixels=12845056), device="cpu"
        ),
        "qwen2-audio": load_model(save_tiny_qwen2_audio(folder / "qwen2-audio"), device="cpu"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    generator = torch.Generator().manual_seed(0)
    images = {
        "640x480": torch.rand(3, 480, 640, generator=generator),
        "64x64": torch.rand(3, 64, 64, generator=generator),
    }
    clips = {
        "5 s": torch.rand(5 * 16000, generator=generator) - 0.5,
        "30 s": torch.rand(30 * 16000, generator=generator) - 0.5,
    }
    cpu = platform.processor() or platform.machine()
    print(
        f"{cpu}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; median of {args.repeats} interleaved rounds"
    )
    print(
        f"{'model':30} {'medium':8} {'tokens':>6} {'before ms':>10} {'after ms':>9} {'cold ms':>8} {'before/after':>13}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, adapter in models(Path(folder)).items():
            audio = adapter.modality == "audio"
            prompt = AUDIO_PROMPT if audio else PROMPT
            for medium_name, medium in (clips if audio else images).items():
                reference = reference_prompt_text(adapter, prompt, medium)
                check_equal(adapter.prompt_text(prompt, medium), reference)
                check_equal(cold(adapter, prompt, medium)(), reference)
                medians = interleaved_medians(
                    {
                        "before": lambda a=adapter, m=medium, p=prompt: reference_prompt_text(a, p, m),
                        "after": lambda a=adapter, m=medium, p=prompt: a.prompt_text(p, m),
                        "cold": cold(adapter, prompt, medium),
                    },
                    args.repeats,
                )
                token_id = adapter.processor.audio_token_id if audio else adapter.processor.image_token_id
                tokens = int((reference["input_ids"] == token_id).sum())
                row = {
                    "model": name,
                    "medium": medium_name,
                    "media_tokens": tokens,
                    **{f"{arm}_ms": 1000 * seconds for arm, seconds in medians.items()},
                    "before_over_after": medians["before"] / medians["after"],
                    "before_over_cold": medians["before"] / medians["cold"],
                    "threads": torch.get_num_threads(),
                }
                rows.append(row)
                print(
                    f"{name:30} {medium_name:8} {tokens:6d} {row['before_ms']:10.3f} {row['after_ms']:9.3f} "
                    f"{row['cold_ms']:8.3f} {row['before_over_after']:12.1f}x"
                )
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
