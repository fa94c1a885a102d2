"""The smoothguard command: JSON output, one-line errors, exit codes."""

import json
import os
import subprocess
import sys

import pytest

from smoothguard.cli import EXIT_USER_ERROR, main


def generate_args(model, image, *extra: str) -> list[str]:
    return ["generate", "--model", str(model), "--image", str(image), "--prompt", "Hi", *extra]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_json_parses(capsys, tiny_llava_dir, image_file):
    extra = ("--num-copies", "3", "--sigma", "0.2", "--max-new-tokens", "4", "--json")
    code, out, _ = run(capsys, generate_args(tiny_llava_dir, image_file, *extra))
    assert code == 0
    result = json.loads(out)
    assert len(result["candidates"]) == 4
    assert result["config"]["sigma"] == 0.2
    assert result["text"] in result["candidates"]


def test_generate_plain_and_no_defense(capsys, tiny_llava_dir, image_file):
    args = generate_args(tiny_llava_dir, image_file, "--max-new-tokens", "4")
    code, out, err = run(capsys, [*args, "--no-defense"])
    assert code == 0 and "[undefended]" in err
    code, defended, err = run(capsys, [*args, "--num-copies", "2", "--sigma", "0"])
    assert code == 0 and "[smoothguard] majority 3/3" in err
    assert defended == out  # sigma 0: every copy is the clean input


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image", "/no/such/image.png"], "/no/such/image.png"),
        (["--sigma", "-1"], "sigma"),
        (["--noise-space", "waveform"], "noise space"),
        (["--num-copies", "-2"], "num_copies"),
    ],
)
def test_user_errors_are_one_line(capsys, tiny_llava_dir, image_file, extra, message):
    code, out, err = run(capsys, generate_args(tiny_llava_dir, image_file, *extra))
    assert code == EXIT_USER_ERROR
    assert out == ""
    assert err.startswith("smoothguard: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_missing_model_is_one_line(capsys, image_file):
    code, _, err = run(capsys, generate_args("/no/model", image_file))
    assert code == EXIT_USER_ERROR and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_console_script_runs(tiny_llava_dir, image_file):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    argv = generate_args(tiny_llava_dir, image_file, "--num-copies", "1", "--max-new-tokens", "2", "--json")
    done = subprocess.run(
        [sys.executable, "-m", "smoothguard", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["candidates"]) == 2
    assert "Traceback" not in done.stderr
