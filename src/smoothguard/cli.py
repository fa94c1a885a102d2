"""The ``smoothguard`` command. User mistakes print one line and exit 2; no tracebacks."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from smoothguard.errors import SmoothGuardError
from smoothguard.noise import NOISE_SPACES

EXIT_USER_ERROR = 2


def _quiet_transformers() -> None:
    """Keep the terminal for our output: no weight-loading bars or backend warnings."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub id or local model folder")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | float16 | bfloat16 (default: auto)")


def _add_guard_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sigma", type=float, default=0.1, help="noise std in the units of --noise-space (default: 0.1, the paper's)"
    )
    parser.add_argument("--num-copies", type=int, default=10, help="noisy copies besides the clean one (default: 10)")
    parser.add_argument(
        "--noise-space",
        choices=NOISE_SPACES,
        default=None,
        help="default: normalized for image models, waveform for audio models",
    )
    parser.add_argument("--seed", type=int, default=0, help="noise and k-means seed (default: 0)")
    parser.add_argument("--no-clamp", action="store_true", help="do not clamp noisy pixels/waveforms")
    parser.add_argument(
        "--embedder", default=None, help="answer embedder: minilm (default, packaged) or roberta-mean:PATH"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="most candidates per generate call (default: all in one)"
    )
    parser.add_argument("--no-defense", action="store_true", help="undefended baseline (same as --num-copies 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smoothguard", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser("generate", help="answer one prompt about an image or audio clip, defended")
    _add_model_options(gen)
    media = gen.add_mutually_exclusive_group(required=True)
    media.add_argument("--image", help="image file (PNG, JPEG, BMP, ...)")
    media.add_argument("--audio", help="audio file (WAV, FLAC, OGG) for audio models")
    gen.add_argument("--prompt", required=True)
    _add_guard_options(gen)
    gen.add_argument("--max-new-tokens", type=int, default=128, help="default: 128 (paper: POPE, MM-SafetyBench)")
    gen.add_argument("--json", action="store_true", help="print the full result as JSON")
    gen.set_defaults(run=_run_generate)
    return parser


def _run_generate(args: argparse.Namespace) -> int:
    from smoothguard import SmoothGuard, load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    guard = SmoothGuard(
        model,
        sigma=args.sigma,
        num_copies=0 if args.no_defense else args.num_copies,
        noise_space=args.noise_space,
        seed=args.seed,
        clamp=not args.no_clamp,
        embedder=args.embedder,
        batch_size=args.batch_size,
    )
    result = guard.generate(args.prompt, image=args.image, audio=args.audio, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(result.text)
    print(_summary_line(result.to_dict()), file=sys.stderr)
    return 0


def _summary_line(result: dict[str, Any]) -> str:
    config, timings = result["config"], result["timings"]
    candidates = len(result["candidates"])
    if config["num_copies"] == 0:
        return f"[undefended] generate {timings['generate']:.2f}s"
    majority = round(result["majority_fraction"] * candidates)
    return (
        f"[smoothguard] majority {majority}/{candidates} ({result['majority_fraction']:.2f}), "
        f"{result['num_distinct']} distinct answers, noise {config['noise_space']} sigma={config['sigma']}, "
        f"generate {timings['generate']:.2f}s, embed+cluster {timings['embed'] + timings['cluster']:.2f}s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _quiet_transformers()
        return args.run(args)
    except SmoothGuardError as exc:
        print(f"smoothguard: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # The reader went away (e.g. ``| head``); nothing more to say.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("smoothguard: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
