"""Helpers shared by several test modules (moved from tests/test_cli.py)."""

import json
import os
import subprocess
import sys

from smoothguard.cli import EXIT_USER_ERROR, main


def generate_args(model, image, *extra: str) -> list[str]:
    return ["generate", "--model", str(model), "--image", str(image), "--prompt", "Hi", *extra]


def run_without_model(code: str) -> dict:
    """Run ``code`` in a fresh interpreter and return what it prints as JSON."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_line_error(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("smoothguard: error:") and message in err and err.count("\n") == 1, err
