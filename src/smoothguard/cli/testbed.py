"""``smoothguard testbed data|train|evaluate`` and ``smoothguard demo`` (the testbed's main job)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from smoothguard.cli.options import add_guard_options, add_threads_option, guard_config
from smoothguard.errors import ConfigError, check_int, check_output_folder
from smoothguard.testbed.ladder import DemoConfig


def register(commands: Any) -> None:
    testbed = commands.add_parser("testbed", help="the trained CPU-sized LLaVA: data, training, evaluation")
    actions = testbed.add_subparsers(dest="action", required=True, metavar="ACTION")

    data = actions.add_parser("data", help="write scenes (PNG) and their questions (JSONL) for inspection")
    data.add_argument("--split", choices=("train", "held-out"), default="held-out")
    data.add_argument("--count", type=int, default=20)
    data.add_argument("--out", required=True)
    data.set_defaults(precheck=_check_out, run=_run_data)

    train = actions.add_parser("train", help="train a testbed model (resumable: rerun the same command)")
    train.add_argument("--out", required=True, help="run folder; the model lands in OUT/model")
    train.add_argument("--steps", type=int, default=1500, help="LLaVA-stage steps (default: %(default)s)")
    train.add_argument(
        "--vision-steps", type=int, default=1200, help="vision pretraining steps first (default: %(default)s)"
    )
    train.add_argument(
        "--shape",
        choices=("testbed", "surrogate"),
        default="testbed",
        help="the model's sizes: the testbed's or the surrogate's (default: %(default)s)",
    )
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--seed", type=int, default=0)
    add_threads_option(train)
    train.set_defaults(precheck=_check_out, run=_run_train)

    evaluate = actions.add_parser("evaluate", help="held-out accuracy per task and negative kind")
    evaluate.add_argument("--model", default="testbed", help="testbed (shipped) or a model folder")
    evaluate.add_argument("--scenes", type=int, default=300)
    evaluate.add_argument("--json", action="store_true")
    add_threads_option(evaluate)
    evaluate.set_defaults(run=_run_evaluate)

    denoiser = actions.add_parser(
        "train-denoiser", help="train the testbed-denoiser purifier (resumable: rerun the same command)"
    )
    denoiser.add_argument("--out", required=True, help="run folder; the model lands in OUT/model")
    denoiser.add_argument("--steps", type=int, default=2000, help="training steps (default: %(default)s)")
    denoiser.add_argument("--batch-size", type=int, default=16, help="scenes per step (default: %(default)s)")
    denoiser.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate (default: %(default)s)")
    denoiser.add_argument("--seed", type=int, default=0)
    add_threads_option(denoiser)
    denoiser.set_defaults(precheck=_check_denoiser, run=_run_train_denoiser)

    evaluate_denoiser = actions.add_parser(
        "evaluate-denoiser", help="held-out PSNR of a testbed denoiser per sigma, noisy vs denoised"
    )
    evaluate_denoiser.add_argument("--model", help="a folder written by train-denoiser (default: the shipped one)")
    evaluate_denoiser.add_argument("--scenes", type=int, default=200, help="held-out scenes (default: %(default)s)")
    evaluate_denoiser.add_argument("--json", action="store_true")
    add_threads_option(evaluate_denoiser)
    evaluate_denoiser.set_defaults(precheck=_check_evaluate_denoiser, run=_run_evaluate_denoiser)

    demo = commands.add_parser(
        "demo", help="the threat ladder on the testbed: utility and attack success rates, with intervals"
    )
    demo.add_argument("--out", default="runs/demo", help="folder for images, plot and summary (default: runs/demo)")
    defaults = DemoConfig()
    _add_demo_options(demo, defaults)
    add_guard_options(demo, defaults=defaults.guard, exclude=("purifier", "purify_clean", "vote", "parser"))
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_threads_option(demo)
    demo.set_defaults(precheck=_check_demo, run=_run_demo)


def _run_data(args: argparse.Namespace) -> int:
    from smoothguard.testbed.data import HELD_OUT_START
    from smoothguard.testbed.scenes import render, sample_scene
    from smoothguard.testbed.tasks import scene_turns

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = HELD_OUT_START if args.split == "held-out" else 0
    with (out / "questions.jsonl").open("w") as handle:
        for seed in range(start, start + args.count):
            scene = sample_scene(seed)
            render(scene).save(out / f"{seed}.png")
            for turn in scene_turns(scene, random.Random(seed)):
                record = {
                    "image": f"{seed}.png",
                    "task": turn.task,
                    "kind": turn.kind,
                    "question": turn.question,
                    "answer": turn.answer,
                    "badge": scene.badge,
                }
                handle.write(json.dumps(record) + "\n")
    print(f"{args.count} scenes and their questions in {out}")
    return 0


def _run_train(args: argparse.Namespace) -> int:
    from smoothguard.testbed.model import SURROGATE_SIZE, ModelSize
    from smoothguard.testbed.train import TrainConfig, train

    started = time.perf_counter()
    config = TrainConfig(
        steps=args.steps, vision_steps=args.vision_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    shape = SURROGATE_SIZE if args.shape == "surrogate" else ModelSize()
    folder = train(args.out, config, shape=shape, progress=True, log=lambda line: print(line, flush=True))
    print(f"model in {folder} ({time.perf_counter() - started:.0f} s this run)")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from smoothguard.models.auto import load_model
    from smoothguard.testbed.accuracy import held_out_accuracy

    report = held_out_accuracy(load_model(args.model, device="cpu"), args.scenes, progress=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for metric, figures in report.items():
        target = (
            f"  (target {figures['target']:.2f}: {'met' if figures['met'] else 'NOT met'})"
            if "target" in figures
            else ""
        )
        print(f"{metric:26} {figures['accuracy']:.3f}  n={figures['n']}{target}")
    return 0


def _check_denoiser(args: argparse.Namespace) -> None:
    check_output_folder(args.out, "--out")
    check_int("--steps", args.steps, minimum=1)
    check_int("--batch-size", args.batch_size, minimum=1)
    check_int("--seed", args.seed, minimum=0)
    if not 0 < args.lr < float("inf"):
        raise ConfigError(f"--lr must be a number > 0, got {args.lr}")


def _run_train_denoiser(args: argparse.Namespace) -> int:
    from smoothguard.testbed.denoiser import DenoiserConfig, evaluate_denoiser, format_report, load, train_denoiser

    started = time.perf_counter()
    config = DenoiserConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    folder = train_denoiser(config, args.out, progress=True, log=lambda line: print(line, flush=True))
    print(format_report(evaluate_denoiser(load(str(folder)))))
    print(f"model in {folder} ({time.perf_counter() - started:.0f} s this run)")
    return 0


def _check_evaluate_denoiser(args: argparse.Namespace) -> None:
    check_int("--scenes", args.scenes, minimum=1)
    if args.model is not None and not Path(args.model).is_dir():
        raise ConfigError(f"--model {args.model}: no such folder; pass a folder written by train-denoiser")


def _run_evaluate_denoiser(args: argparse.Namespace) -> int:
    from smoothguard.testbed.denoiser import evaluate_denoiser, format_report, load

    model = load(args.model)
    report = evaluate_denoiser(model, scenes=args.scenes)
    if args.json:
        print(json.dumps({**report, "denoiser": model.describe()}, indent=2))
    else:
        print(format_report(report))
    return 0


def _add_demo_options(parser: argparse.ArgumentParser, defaults: DemoConfig) -> None:
    """One option per ``DemoConfig`` field with a help text (``--pope-scenes``, ..., ``--purifier``,
    ``--fresh``), built from the fields as ``add_guard_options`` builds the guard's: the type from the
    default, a flag for a bool; :func:`_check_demo` reads them back."""
    fields = [field for field in dataclasses.fields(DemoConfig) if "help" in field.metadata]
    for field in fields:
        default = getattr(defaults, field.name)
        kind: dict[str, Any] = {"action": "store_true"} if isinstance(default, bool) else {"type": type(default)}
        flag = f"--{field.name.replace('_', '-')}"
        parser.add_argument(flag, dest=field.name, default=default, help=field.metadata["help"], **kind)
    parser.set_defaults(demo_fields=tuple(field.name for field in fields))


def _check_demo(args: argparse.Namespace) -> None:
    from smoothguard.noise import validate_sigma
    from smoothguard.purify import check_purifier_spec

    check_output_folder(args.out, "--out")
    guard = guard_config(args)
    given = {name: getattr(args, name) for name in args.demo_fields}
    args.demo = DemoConfig(
        **{
            **given,
            "guard": guard,
            "best_sigma": validate_sigma(given["best_sigma"], guard.noise_space),
            "denoiser_sigma": validate_sigma(given["denoiser_sigma"], "pixel"),
            "purifier": check_purifier_spec(given["purifier"]),
        }
    )


def _check_out(args: argparse.Namespace) -> None:
    check_output_folder(args.out, "--out")


def _run_demo(args: argparse.Namespace) -> int:
    from smoothguard.testbed.demo import format_table, run_demo

    # Phases as lines on stderr; the attacks (when they optimise) show a bar on a terminal, lines elsewhere.
    summary = run_demo(args.demo, args.out, progress=True, log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_table(summary))
        print(f"images, plot and summary.json in {args.out}")
    return 0
