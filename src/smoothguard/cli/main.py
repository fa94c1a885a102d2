"""The ``smoothguard`` command. User mistakes print one line and exit 2; no tracebacks.

Each subcommand module declares its options in ``register`` (cheap: argparse only), checks what needs no
model in its ``precheck`` and imports what its ``run`` needs when it runs, so ``--help`` and option
mistakes answer before torch is imported.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import smoothguard
from smoothguard.cli import attack, certify, evaluate, generate, serve, testbed
from smoothguard.cli.options import EXIT_USER_ERROR
from smoothguard.errors import ConfigError, SmoothGuardError

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = (generate, attack, testbed, evaluate, certify, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smoothguard", description="SmoothGuard: defend multimodal LLMs with noise and clustering."
    )
    parser.add_argument("--version", action="version", version=f"smoothguard {smoothguard.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(commands)
    return parser


def _quiet_transformers() -> None:
    """Keep the terminal for our output: no weight-loading bars or backend warnings."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "threads", None) is not None and args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        if hasattr(args, "precheck"):
            args.precheck(args)  # option checks that need no model: before anything heavy is imported
        if getattr(args, "threads", None) is not None:
            from smoothguard.models.auto import set_threads

            set_threads(args.threads)
        _quiet_transformers()
        return args.run(args)
    except SmoothGuardError as exc:
        print(f"smoothguard: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # The reader went away (e.g. ``| head``); nothing more to say.
        sys.stderr.close()
        return 0
    except OSError as exc:
        # A file or folder the system refused mid-run (permissions, a full disk, a vanished folder).
        where = f": {exc.filename}" if exc.filename else ""
        print(f"smoothguard: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("smoothguard: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
