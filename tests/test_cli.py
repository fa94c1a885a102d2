"""The smoothguard command: JSON output, one-line errors, exit codes."""

import json
import os
import subprocess
import sys

import pytest

from smoothguard.cli import EXIT_USER_ERROR, main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_json_parses(capsys, tiny_llava_dir, image_file):
    code, out, _ = run(
        capsys,
        "generate",
        "--model",
        str(tiny_llava_dir),
        "--image",
        str(image_file),
        "--prompt",
        "What is in the image?",
        "--num-copies",
        "3",
        "--sigma",
        "0.2",
        "--max-new-tokens",
        "4",
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert len(result["candidates"]) == 4
    assert result["config"]["sigma"] == 0.2
    assert result["text"] in result["candidates"]


def test_generate_plain_and_no_defense(capsys, tiny_llava_dir, image_file):
    args = [
        "generate",
        "--model",
        str(tiny_llava_dir),
        "--image",
        str(image_file),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "4",
    ]
    code, out, err = run(capsys, *args, "--no-defense")
    assert code == 0 and "[undefended]" in err
    code, defended, err = run(capsys, *args, "--num-copies", "2", "--sigma", "0")
    assert code == 0 and "[smoothguard] majority 3/3" in err
    assert defended == out  # sigma 0: every copy is the clean input


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image", "/no/such/image.png"], "/no/such/image.png"),
        (["--sigma", "-1"], "sigma"),
        (["--noise-space", "waveform"], "noise space"),
    ],
)
def test_user_errors_are_one_line(capsys, tiny_llava_dir, image_file, extra, message):
    args = ["generate", "--model", str(tiny_llava_dir), "--prompt", "Hi", "--image", str(image_file)]
    code, out, err = run(capsys, *args, *extra)
    assert code == EXIT_USER_ERROR
    assert out == ""
    assert err.startswith("smoothguard: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_missing_model_is_one_line(capsys, image_file):
    code, _, err = run(capsys, "generate", "--model", "/no/model", "--image", str(image_file), "--prompt", "Hi")
    assert code == EXIT_USER_ERROR and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_console_script_runs(tiny_llava_dir, image_file):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "smoothguard",
            "generate",
            "--model",
            str(tiny_llava_dir),
            "--image",
            str(image_file),
            "--prompt",
            "Hi",
            "--num-copies",
            "1",
            "--max-new-tokens",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["candidates"]) == 2
    assert "Traceback" not in done.stderr
