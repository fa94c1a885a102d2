"""Tests of ``smoothguard.cli.generate``."""

import json

import pytest
import torch

from smoothguard import ConfigError
from smoothguard.cli import EXIT_USER_ERROR, main
from smoothguard.models.auto import set_threads
from support.cli import generate_args, one_line_error

UPSTREAM_KEY = "sk-upstream-key"


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


def test_cli_audio(capsys, qwen_audio, audio_file):
    code = main(
        [
            "generate",
            "--model",
            qwen_audio.name,
            "--audio",
            str(audio_file),
            "--prompt",
            "Hi",
            "--num-copies",
            "2",
            "--max-new-tokens",
            "3",
            "--json",
        ]
    )
    assert code == 0
    assert len(json.loads(capsys.readouterr().out)["candidates"]) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--purifier", "nope"], "unknown purifier 'nope'"),
        (["--purifier", "testbed-denoiser", "--noise-space", "normalized"], "use noise space pixel"),
        (["--vote", "parsed"], "needs a parser"),
    ],
)
def test_cli_purifier_and_vote_errors_are_one_line(capsys, extra, message, image_file):
    code = main(["generate", "--model", "/no/such/model", "--image", str(image_file), "--prompt", "Hi", *extra])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR and message in err and len(err.splitlines()) == 1


def test_cli_generate_with_a_purifier_folder_and_parsed_vote(capsys, tiny_llava_dir, image_file):
    pytest.importorskip("smoothguard.testbed.denoiser", reason="the testbed denoiser is not built yet")
    argv = ["generate", "--model", str(tiny_llava_dir), "--image", str(image_file), "--prompt", "Is it red?"]
    code = main(
        [
            *argv,
            "--purifier",
            "testbed-denoiser",
            "--sigma",
            "0.1",
            "--num-copies",
            "2",
            "--json",
            "--vote",
            "parsed",
            "--parser",
            "yes-no",
            "--max-new-tokens",
            "3",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["config"]["purifier"] == "testbed-denoiser" and sum(result["votes"].values()) == 3
    assert result["config"]["purifier_identity"]["name"] == "testbed-denoiser"


def test_the_cli_refuses_a_placeholder_in_one_line(capsys, tiny_llava_dir, image_file):
    argv = ["generate", "--model", str(tiny_llava_dir), "--image", str(image_file), "--max-new-tokens", "2"]
    one_line_error(capsys, [*argv, "--prompt", "is there <image> a dog?"], "special token")


def test_an_absurd_sigma_is_one_line_before_the_model_loads(capsys, image_file):
    argv = ["generate", "--model", "/no/such/model", "--image", str(image_file), "--prompt", "hi"]
    one_line_error(capsys, [*argv, "--sigma", "1e9", "--noise-space", "pixel"], "largest sensible value")


def test_invalid_utf8_in_a_prompt_is_one_line(capsys, tiny_llava_dir, image_file):
    prompt = b"\xff\xfe is there a dog?".decode("utf-8", "surrogateescape")  # as Python decodes argv
    argv = ["generate", "--model", str(tiny_llava_dir), "--image", str(image_file), "--prompt", prompt]
    one_line_error(capsys, argv, "not valid UTF-8")


def test_generate_command_runs_against_a_remote_model(upstream, image_file, capsys, monkeypatch):
    monkeypatch.setenv("SMOOTHGUARD_REMOTE_API_KEY", UPSTREAM_KEY)
    model = f"openai:{upstream.url}/v1#tiny-llava"
    args = ["--image", str(image_file), "--prompt", "Hi", "--num-copies", "2", "--max-new-tokens", "4", "--json"]
    assert main(["generate", "--model", model, *args]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["candidates"]) == 3 and result["config"]["noise_space"] == "pixel"
    assert result["config"]["model"]["family"] == "openai"


def test_threads_reach_torch_and_bad_values_are_one_line(capsys, tiny_llava_dir, image_file):
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        argv = ["generate", "--model", str(tiny_llava_dir), "--image", str(image_file), "--prompt", "hi"]
        assert main([*argv, "--no-defense", "--max-new-tokens", "1", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
        capsys.readouterr()
        assert main([*argv, "--threads", "0"]) == EXIT_USER_ERROR
        assert "--threads must be >= 1" in capsys.readouterr().err
        with pytest.raises(ConfigError, match="threads"):
            set_threads(0)
    finally:
        torch.set_num_threads(before)
