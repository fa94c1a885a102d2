"""Options shared by the subcommands: the model's, and the guard's, built once from ``GuardConfig``'s fields.

Nothing heavy is imported here: parsing the command line (and ``--help``) needs no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Collection
from typing import Any

from smoothguard.answers import PARSERS
from smoothguard.config import VOTES, GuardConfig
from smoothguard.errors import ConfigError
from smoothguard.noise import NOISE_SPACES
from smoothguard.purify import check_purifier_spec

#: Exit status of a user mistake (bad option, missing file, unknown model, ...).
EXIT_USER_ERROR = 2
#: ``--attn-implementation`` choices (transformers' names).
ATTENTION = ("sdpa", "flash_attention_2", "eager")

#: argparse settings of each GuardConfig field that is not a plain number; the help is the field's.
_SPECIAL: dict[str, dict[str, Any]] = {
    "sigma": {"type": float},
    "noise_space": {"choices": NOISE_SPACES},
    "clamp": {"flags": ("--no-clamp",), "action": "store_false"},
    "embedder": {},
    "batch_size": {"type": int},
    "adaptive": {"action": "store_true"},
    "purifier": {},
    "purify_clean": {"flags": ("--no-purify-clean",), "action": "store_false"},
    "vote": {"choices": VOTES},
    "parser": {"choices": tuple(PARSERS.names())},
}


def add_model_options(parser: argparse.ArgumentParser, *, local_only: bool = False) -> None:
    """``--model``, ``--device``, ``--dtype``, ``--device-map``, ``--attn-implementation``, ``--compile`` and
    ``--threads`` (:func:`model_options` reads the loading ones back). ``local_only``: no ``--model`` (the
    command names its model otherwise)."""
    if not local_only:
        parser.add_argument("--model", required=True, help="hub id or local model folder")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | float16 | bfloat16 (default: auto)")
    parser.add_argument(
        "--device-map",
        help="instead of --device: auto (shard across GPUs, offload what does not fit; needs accelerate)",
    )
    parser.add_argument("--attn-implementation", choices=ATTENTION, help="default: transformers' choice")
    parser.add_argument(
        "--compile", action="store_true", help="static KV cache + torch.compile for decoding (GPU runs; compiles first)"
    )
    add_threads_option(parser)


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's, every core); on a shared machine give each process its share",
    )


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``load_model`` keywords of :func:`add_model_options`' options."""
    return {
        "device": args.device,
        "dtype": args.dtype,
        "device_map": args.device_map,
        "attn_implementation": args.attn_implementation,
        "compile_decode": args.compile,
    }


def add_guard_options(
    parser: argparse.ArgumentParser,
    *,
    defaults: GuardConfig | None = None,
    exclude: Collection[str] = (),
    unset: dict[str, str] | None = None,
    defense: bool = False,
) -> None:
    """One option per ``GuardConfig`` field (``--sigma``, ``--num-copies``, ``--noise-space``, ``--seed``,
    ``--no-clamp``, ``--num-clusters``, ``--embedder``, ``--batch-size``, ``--adaptive``, ``--purifier``,
    ``--no-purify-clean``, ``--vote``, ``--parser``) but those in
    ``exclude``, defaulting to ``defaults``' values; :func:`guard_config` reads them back. ``unset``: fields
    whose option defaults to ``None`` (not given: the command decides), each with its help text. ``defense``:
    add ``--defense/--no-defense`` too (for the commands that can run undefended)."""
    defaults = defaults or GuardConfig()
    unset = unset or {}
    group = parser.add_argument_group("SmoothGuard")
    fields = [field for field in dataclasses.fields(GuardConfig) if field.name not in exclude]
    for field in fields:
        special = dict(_SPECIAL.get(field.name, {"type": type(field.default)}))
        flags = special.pop("flags", (f"--{field.name.replace('_', '-')}",))
        default = getattr(defaults, field.name)
        if field.name == "adaptive":
            default = default is not None
        if field.name in unset:
            default = None
        help_text = unset.get(field.name, field.metadata["help"])
        group.add_argument(*flags, dest=field.name, default=default, help=help_text, **special)
    if defense:
        group.add_argument(
            "--defense",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="SmoothGuard on (default), or off: the undefended baseline (--num-copies 0)",
        )
    parser.set_defaults(guard_defaults=defaults, guard_fields=tuple(field.name for field in fields))


def guard_config(args: argparse.Namespace, **changes: Any) -> GuardConfig:
    """The ``GuardConfig`` of the options :func:`add_guard_options` added (validated), with ``changes``; an
    ``unset`` option left out keeps the default's value; ``--no-defense`` makes ``num_copies`` 0."""
    defaults: GuardConfig = args.guard_defaults
    given = {name: getattr(args, name) for name in args.guard_fields if getattr(args, name) is not None}
    if "adaptive" in given:
        given["adaptive"] = defaults.adaptive or True if given["adaptive"] else None
    if not getattr(args, "defense", True):
        given["num_copies"] = 0
    config = defaults.replace(**{**given, **changes})
    if config.purifier is not None:
        check_purifier_spec(config.purifier)
    return config


def add_benchmark_options(parser: argparse.ArgumentParser) -> None:
    """One flag per option the built-in benchmarks declare (their ``Options``), and ``--option KEY=VALUE`` for
    any other (a plug-in's); :func:`benchmark_options` reads them back."""
    from smoothguard.eval.base import builtin_options

    group = parser.add_argument_group("benchmark options")
    declared = builtin_options()
    for name, uses in declared.items():
        helps = "; ".join(f"{bench}: {field.metadata['help']}" for bench, field in uses)
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, type=uses[0][1].metadata["kind"], help=helps)
    group.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="any other option of the benchmark's loader"
    )
    parser.set_defaults(benchmark_option_names=tuple(declared))


def benchmark_options(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark options given (flags of :func:`add_benchmark_options`, then each ``--option``)."""
    options = {name: getattr(args, name) for name in args.benchmark_option_names if getattr(args, name) is not None}
    for pair in args.option:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option takes KEY=VALUE, got {pair!r}")
        options[key.strip().replace("-", "_")] = value
    return options
