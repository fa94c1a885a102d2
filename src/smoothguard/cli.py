"""The ``smoothguard`` command. User mistakes print one line and exit 2; no tracebacks."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from smoothguard.attacks.pgd import NORMS
from smoothguard.errors import SmoothGuardError, UnsupportedError
from smoothguard.noise import NOISE_SPACES

EXIT_USER_ERROR = 2


def _quiet_transformers() -> None:
    """Keep the terminal for our output: no weight-loading bars or backend warnings."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub id or local model folder")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | float16 | bfloat16 (default: auto)")


def add_guard_options(parser: argparse.ArgumentParser) -> None:
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


def guard_from_args(model: Any, args: argparse.Namespace, *, num_copies: int | None = None) -> Any:
    """A ``SmoothGuard`` from the options of ``add_guard_options``."""
    from smoothguard import SmoothGuard

    return SmoothGuard(
        model,
        sigma=args.sigma,
        num_copies=args.num_copies if num_copies is None else num_copies,
        noise_space=args.noise_space,
        seed=args.seed,
        clamp=not args.no_clamp,
        embedder=args.embedder,
        batch_size=args.batch_size,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smoothguard", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _registrars():
        register(commands)
    return parser


def _registrars() -> list[Callable[[Any], None]]:
    """One function per feature area that adds its subcommands (each area keeps its own CLI module)."""
    from smoothguard.certify_cli import register as certification
    from smoothguard.eval.cli import register as evaluation
    from smoothguard.server.cli import register as serving
    from smoothguard.testbed.cli import register as testbed

    return [_add_generate_parser, _add_attack_parser, testbed, evaluation, certification, serving]


def _add_generate_parser(commands: Any) -> None:
    gen = commands.add_parser("generate", help="answer one prompt about an image or audio clip, defended")
    add_model_options(gen)
    media = gen.add_mutually_exclusive_group(required=True)
    media.add_argument("--image", help="image file (PNG, JPEG, BMP, ...)")
    media.add_argument("--audio", help="audio file (WAV, FLAC, OGG) for audio models")
    gen.add_argument("--prompt", required=True)
    add_guard_options(gen)
    gen.add_argument("--no-defense", action="store_true", help="undefended baseline (same as --num-copies 0)")
    gen.add_argument("--max-new-tokens", type=int, default=128, help="default: 128 (paper: POPE, MM-SafetyBench)")
    gen.add_argument("--json", action="store_true", help="print the full result as JSON")
    gen.set_defaults(run=_run_generate)


def _add_attack_parser(commands: Any) -> None:
    attack = commands.add_parser(
        "attack",
        help="PGD against a model: targeted, universal (several targets/prompts), adaptive (EOT), audio",
        description="Sign-gradient PGD on the input through the model's own preprocessing. Image eps/alpha are "
        "in 1/255 pixel units, audio eps/alpha in amplitude units. The --sigma/--noise-space/--num-copies options "
        "set SmoothGuard's noise for --eot-samples and the defense used by --check.",
    )
    add_model_options(attack)
    media = attack.add_mutually_exclusive_group(required=True)
    media.add_argument("--image", help="image to perturb")
    media.add_argument("--audio", help="audio clip to perturb (audio models)")
    prompts = attack.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", action="append", help="prompt (repeat for several; losses are averaged)")
    prompts.add_argument("--prompts", help="file of prompts, one per line (or CSV, first column)")
    goal = attack.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target", help="the text the model should produce")
    goal.add_argument("--targets", help="file of target sentences, one per line or CSV (Qi et al.'s corpus)")
    goal.add_argument("--untargeted", action="store_true", help="push the answer away from --reference")
    attack.add_argument("--reference", help="answer to move away from (default: the clean greedy answer)")
    attack.add_argument("--eps", type=float, default=None, help="budget (default: 32/255 image, 0.01 audio)")
    attack.add_argument("--unconstrained", action="store_true", help="no budget (Qi et al.'s unconstrained image)")
    attack.add_argument("--alpha", type=float, default=None, help="step size (default: 1/255 image, 0.001 audio)")
    attack.add_argument("--steps", type=int, default=100)
    attack.add_argument("--norm", choices=NORMS, default="linf")
    attack.add_argument("--no-random-start", action="store_true")
    attack.add_argument("--targets-per-step", type=int, default=8, help="targets sampled per step (default: 8)")
    attack.add_argument("--eot-samples", type=int, default=0, help="adaptive attack: noisy copies per step (0 = off)")
    add_guard_options(attack)
    attack.add_argument("--no-early-stop", action="store_true", help="run all steps even once the target appears")
    attack.add_argument("--check-every", type=int, default=10, help="steps between early-stop checks")
    attack.add_argument("--out", help="save the adversarial input (PNG/BMP, or WAV for audio) + a JSON sidecar")
    attack.add_argument("--resume", help="checkpoint to resume from and keep writing (default: beside --out)")
    attack.add_argument("--checkpoint-every", type=int, default=50)
    attack.add_argument("--check", action="store_true", help="decode the result undefended and with SmoothGuard")
    attack.add_argument("--max-new-tokens", type=int, default=64)
    attack.add_argument("--json", action="store_true", help="print the outcome as JSON")
    attack.set_defaults(run=_run_attack)


def _run_generate(args: argparse.Namespace) -> int:
    from smoothguard import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    guard = guard_from_args(model, args, num_copies=0 if args.no_defense else None)
    result = guard.generate(args.prompt, image=args.image, audio=args.audio, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(result.text)
    print(_summary_line(result.to_dict()), file=sys.stderr)
    return 0


def _run_attack(args: argparse.Namespace) -> int:
    from smoothguard import SmoothGuard, load_model
    from smoothguard.attacks import (
        EOT,
        PGD,
        AwayObjective,
        TargetObjective,
        WaveformPGD,
        check_attack,
        check_output_path,
        load_prompts,
        load_targets,
        save_adversarial,
    )
    from smoothguard.inputs import load_audio, load_image

    if args.out:
        check_output_path(args.out, "audio" if args.audio else "image")
    prompts = args.prompt or load_prompts(args.prompts)
    targets = [args.target] if args.target else load_targets(args.targets) if args.targets else None
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    guard = guard_from_args(model, args)
    audio = args.audio is not None
    if ("audio" if audio else "image") != model.modality:
        raise UnsupportedError(f"{model.name} is an {model.modality} model: pass --{model.modality}")
    medium = load_audio(args.audio, sampling_rate=model.sampling_rate) if audio else load_image(args.image)
    if targets is None:
        reference = (
            args.reference
            or SmoothGuard(model, num_copies=0)
            .generate(prompts[0], max_new_tokens=args.max_new_tokens, **{model.modality: medium})
            .text
        )
        objective = AwayObjective(reference)
    else:
        objective = TargetObjective.of(targets, args.targets_per_step, args.seed)
    attack_class = WaveformPGD if audio else PGD
    attack = attack_class(
        eps=None if args.unconstrained else (args.eps if args.eps is not None else 0.01 if audio else 32),
        alpha=args.alpha if args.alpha is not None else 0.001 if audio else 1,
        steps=args.steps,
        norm=args.norm,
        random_start=not args.no_random_start,
        eot=EOT.from_guard(guard, args.eot_samples) if args.eot_samples else None,
        early_stop=not args.no_early_stop,
        check_every=args.check_every,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        progress=sys.stderr.isatty(),
    )
    checkpoint = args.resume or (f"{args.out}.ckpt.safetensors" if args.out else None)
    result = attack(model, medium, prompts, objective, checkpoint=checkpoint, max_new_tokens=args.max_new_tokens)
    outcome: dict[str, Any] = {
        "start_loss": result.start_loss,
        "end_loss": result.end_loss,
        "linf": result.linf,
        "l2": result.l2,
        "units": attack.unit_name,
        "steps": result.steps,
        "target_generated": result.target_generated,
        "answer": result.answer,
        "seconds": result.seconds,
        "out": args.out,
        "checkpoint": checkpoint,
    }
    if args.out:
        outcome["sidecar"] = str(save_adversarial(result, args.out))
    if args.check:
        attacked = args.out or result.adversarial
        outcome["check"] = check_attack(
            guard, prompts[0], attacked, targets[0] if targets else None, max_new_tokens=args.max_new_tokens
        )
    outcome["config"] = result.config
    if args.json:
        print(json.dumps(outcome, indent=2))
        return 0
    print(result.answer)
    print(
        f"[attack] loss {result.start_loss:.4f} -> {result.end_loss:.4f} in {result.steps} steps, "
        f"L-inf {result.linf:.4g} ({attack.unit_name}), target generated: {result.target_generated}",
        file=sys.stderr,
    )
    if args.check:
        check = outcome["check"]
        print(f"[check] undefended: {check['undefended']['answer']!r}", file=sys.stderr)
        print(f"[check] smoothguard: {check['smoothguard']['answer']!r}", file=sys.stderr)
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
