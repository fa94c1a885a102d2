"""The smoothguard command: JSON output, one-line errors, exit codes."""

import json
import os
import subprocess
import sys

from support.cli import generate_args, run_without_model


def test_console_script_runs(tiny_llava_dir, image_file):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    argv = generate_args(tiny_llava_dir, image_file, "--num-copies", "1", "--max-new-tokens", "2", "--json")
    done = subprocess.run(
        [sys.executable, "-m", "smoothguard", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["candidates"]) == 2
    assert "Traceback" not in done.stderr


def test_help_and_user_mistakes_answer_before_torch_is_imported(tmp_path):
    code = f"""
import contextlib, io, json, sys
from smoothguard.cli import main
answers = {{}}
for argv in (["--help"], ["generate", "--help"], ["certify", "--help"], ["serve", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as stop:
            answers[" ".join(argv)] = stop.code
err = io.StringIO()
generate = ["generate", "--model", "testbed", "--prompt", "hi", "--image"]
with contextlib.redirect_stderr(err):
    answers["missing"] = main([*generate, {str(tmp_path / "no.png")!r}])
    answers["sigma"] = main([*generate, "x.png", "--sigma", "-1"])
answers["err"] = err.getvalue()
answers["torch"] = "torch" in sys.modules
print(json.dumps(answers))
"""
    answers = run_without_model(code)
    assert answers["torch"] is False
    assert [answers[key] for key in ("--help", "generate --help", "certify --help", "serve --help")] == [0, 0, 0, 0]
    assert answers["missing"] == answers["sigma"] == 2
    lines = answers["err"].splitlines()
    assert len(lines) == 2 and "no.png: no such file" in lines[0] and "sigma must be" in lines[1]
