"""``smoothguard generate``: answer one prompt about an image or audio clip, defended."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from smoothguard.cli.options import add_guard_options, add_model_options, guard_config, model_options
from smoothguard.errors import check_file, check_int


def register(commands: Any) -> None:
    gen = commands.add_parser("generate", help="answer one prompt about an image or audio clip, defended")
    add_model_options(gen)
    media = gen.add_mutually_exclusive_group(required=True)
    media.add_argument("--image", help="image file (PNG, JPEG, BMP, ...)")
    media.add_argument("--audio", help="audio file (WAV, FLAC, OGG) for audio models")
    gen.add_argument("--prompt", required=True)
    add_guard_options(gen, defense=True)
    gen.add_argument("--max-new-tokens", type=int, default=128, help="default: 128 (paper: POPE, MM-SafetyBench)")
    gen.add_argument("--json", action="store_true", help="print the full result as JSON")
    gen.set_defaults(precheck=check, run=run)


def check(args: argparse.Namespace) -> None:
    args.guard = guard_config(args)
    check_int("max_new_tokens", args.max_new_tokens, minimum=1)
    check_file(args.image or args.audio, args.image or args.audio, kind="image" if args.image else "audio")


def run(args: argparse.Namespace) -> int:
    from smoothguard import SmoothGuard, load_model
    from smoothguard.inputs import load_image, validate_prompt

    # A corrupt image or a bad prompt is refused before the model loads.
    image = load_image(args.image) if args.image else None
    validate_prompt(args.prompt)
    model = load_model(args.model, **model_options(args))
    guard = SmoothGuard(model, args.guard)
    result = guard.generate(args.prompt, image=image, audio=args.audio, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(result.text)
    print(summary_line(result.to_dict()), file=sys.stderr)
    return 0


def summary_line(result: dict[str, Any]) -> str:
    config, timings = result["config"], result["timings"]
    candidates = len(result["candidates"])
    if config["num_copies"] == 0:
        return f"[undefended] generate {timings['generate']:.2f}s"
    majority = round(result["majority_fraction"] * candidates)
    votes = ", votes " + " ".join(f"{k}={v}" for k, v in result["votes"].items()) if result["votes"] else ""
    purifier = f" + {config['purifier']}" if config["purifier"] else ""
    return (
        f"[smoothguard] majority {majority}/{candidates} ({result['majority_fraction']:.2f}){votes}, "
        f"{result['num_distinct']} distinct answers, noise {config['noise_space']} sigma={config['sigma']}{purifier}, "
        f"generate {timings['generate']:.2f}s, embed+cluster {timings['embed'] + timings['cluster']:.2f}s"
    )
