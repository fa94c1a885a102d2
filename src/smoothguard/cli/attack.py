"""``smoothguard attack``: PGD against a model (targeted, universal, adaptive EOT, audio)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from smoothguard.attacks import NORMS, SCHEDULES
from smoothguard.cli.options import add_guard_options, add_model_options, guard_config, model_options
from smoothguard.errors import ConfigError, check_file, check_output_folder


def register(commands: Any) -> None:
    attack = commands.add_parser(
        "attack",
        help="PGD against a model: targeted, universal (several targets/prompts), adaptive (EOT), audio",
        description="Sign-gradient PGD on the input through the model's own preprocessing. Image eps/alpha are "
        "in 1/255 pixel units, audio eps/alpha in amplitude units. The SmoothGuard options set the noise for "
        "--eot-samples and the defense used by --check.",
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
    attack.add_argument(
        "--schedule", choices=SCHEDULES, default="cosine", help="step size: cosine decay from --alpha, or constant"
    )
    attack.add_argument("--no-random-start", action="store_true")
    attack.add_argument("--restarts", type=int, default=1, help="runs from different random starts; the best is kept")
    attack.add_argument("--targets-per-step", type=int, default=8, help="targets sampled per step (default: 8)")
    attack.add_argument(
        "--eot-samples",
        type=int,
        default=0,
        help="adaptive attack: noisy copies per step, the clean candidate added (0 = off)",
    )
    add_guard_options(attack)
    attack.add_argument("--no-early-stop", action="store_true", help="run all steps even once the target appears")
    attack.add_argument("--check-every", type=int, default=10, help="steps between early-stop checks")
    attack.add_argument("--out", help="save the adversarial input (PNG/BMP, or WAV for audio) + a JSON sidecar")
    attack.add_argument("--resume", help="checkpoint to resume from and keep writing (default: beside --out)")
    attack.add_argument("--checkpoint-every", type=int, default=50)
    attack.add_argument("--check", action="store_true", help="decode the result undefended and with SmoothGuard")
    attack.add_argument("--max-new-tokens", type=int, default=64)
    attack.add_argument("--json", action="store_true", help="print the outcome as JSON")
    attack.set_defaults(precheck=check, run=run)


def check(args: argparse.Namespace) -> None:
    args.guard = guard_config(args)
    if args.eot_samples < 0:
        raise ConfigError(f"--eot-samples must be >= 0, got {args.eot_samples}")
    if args.target is not None and not args.target.strip():
        raise ConfigError("--target is empty; pass the text the model should produce (or --untargeted)")
    if args.out:
        check_output_folder(Path(args.out).parent, "--out")
    check_file(args.image or args.audio, args.image or args.audio, kind="image" if args.image else "audio")
    for name in ("prompts", "targets"):
        if getattr(args, name):
            check_file(getattr(args, name), getattr(args, name), kind=name[:-1])


def run(args: argparse.Namespace) -> int:
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
    from smoothguard.errors import UnsupportedError
    from smoothguard.inputs import load_audio, load_image

    if args.out:
        check_output_path(args.out, "audio" if args.audio else "image")
    prompts = args.prompt or load_prompts(args.prompts)
    targets = [args.target] if args.target else load_targets(args.targets) if args.targets else None
    model = load_model(args.model, **model_options(args))
    guard = SmoothGuard(model, args.guard)
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
        objective = TargetObjective.of(targets, args.targets_per_step, args.guard.seed)
    attack_class = WaveformPGD if audio else PGD
    attack = attack_class(
        eps=None if args.unconstrained else (args.eps if args.eps is not None else 0.01 if audio else 32),
        alpha=args.alpha if args.alpha is not None else 0.001 if audio else 1,
        steps=args.steps,
        norm=args.norm,
        schedule=args.schedule,
        random_start=not args.no_random_start,
        restarts=args.restarts,
        eot=EOT.from_guard(guard, args.eot_samples) if args.eot_samples else None,
        early_stop=not args.no_early_stop,
        check_every=args.check_every,
        seed=args.guard.seed,
        checkpoint_every=args.checkpoint_every,
        progress=True,
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
        "best_loss": result.best_loss,
        "best_step": result.best_step,
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
        f"[attack] loss {result.start_loss:.4f} -> {result.end_loss:.4f} in {result.steps} steps "
        f"(best {result.best_loss:.4f} at step {result.best_step}), "
        f"L-inf {result.linf:.4g} ({attack.unit_name}), target generated: {result.target_generated}",
        file=sys.stderr,
    )
    if args.check:
        check = outcome["check"]
        print(f"[check] undefended: {check['undefended']['answer']!r}", file=sys.stderr)
        print(f"[check] smoothguard: {check['smoothguard']['answer']!r}", file=sys.stderr)
    return 0
