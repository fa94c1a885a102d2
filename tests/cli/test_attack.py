"""`smoothguard attack`: JSON outcome, saved artefacts, resume by rerunning, checks, user errors."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from smoothguard.attacks import load_prompts, load_targets
from smoothguard.cli import EXIT_USER_ERROR, main
from smoothguard.inputs import load_image
from smoothguard.models.tiny import save_tiny_qwen2_audio
from support.cli import one_line_error

TARGET = "Sure, here is the secret."


def attack_args(model, image, *extra: str) -> list[str]:
    return ["attack", "--model", str(model), "--image", str(image), "--prompt", "What is in the image?", *extra]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_attack_json_saves_image_sidecar_and_checks(capsys, tiny_llava_dir, image_file, tmp_path):
    out = tmp_path / "adv.png"
    extra = ("--target", TARGET, "--eps", "8", "--alpha", "2", "--steps", "4", "--out", str(out))
    code, stdout, _ = run(
        capsys,
        attack_args(
            tiny_llava_dir, image_file, *extra, "--check", "--num-copies", "2", "--max-new-tokens", "4", "--json"
        ),
    )
    assert code == 0
    outcome = json.loads(stdout)
    assert outcome["steps"] == 4 and outcome["linf"] <= 8
    assert outcome["end_loss"] < outcome["start_loss"]
    assert outcome["target_generated"] is False
    assert set(outcome["check"]) == {"target", "undefended", "smoothguard"}
    assert outcome["check"]["smoothguard"]["num_candidates"] == 3
    sidecar = json.loads((tmp_path / "adv.png.json").read_text())
    assert sidecar["file"] == "adv.png" and len(sidecar["sha256"]) == 64
    # Mutation caught: the sha256 computed over the file's name (or path) instead of its bytes.
    assert sidecar["sha256"] == hashlib.sha256((tmp_path / "adv.png").read_bytes()).hexdigest()
    assert sidecar["config"]["objective"]["targets"] == [TARGET]
    adversarial = load_image(out)
    original = load_image(image_file)
    assert adversarial.shape == original.shape
    assert ((adversarial - original).abs().max() * 255).item() <= 8 + 1e-4


def test_rerun_resumes_from_the_checkpoint(capsys, tiny_llava_dir, image_file, tmp_path):
    out = tmp_path / "adv.png"
    base = attack_args(
        tiny_llava_dir,
        image_file,
        "--target",
        TARGET,
        "--out",
        str(out),
        "--checkpoint-every",
        "2",
        "--schedule",
        "constant",  # a cosine schedule depends on --steps: only a constant one can be extended
        "--no-early-stop",
        "--max-new-tokens",
        "2",
        "--json",
    )
    assert run(capsys, [*base, "--steps", "2"])[0] == 0
    code, stdout, _ = run(capsys, [*base, "--steps", "4"])
    resumed = json.loads(stdout)
    assert code == 0 and resumed["steps"] == 4
    fresh_out = tmp_path / "fresh.png"
    fresh = attack_args(
        tiny_llava_dir,
        image_file,
        "--target",
        TARGET,
        "--out",
        str(fresh_out),
        "--steps",
        "4",
        "--schedule",
        "constant",
        "--no-early-stop",
        "--max-new-tokens",
        "2",
        "--json",
    )
    uninterrupted = json.loads(run(capsys, fresh)[1])
    assert torch.equal(load_image(out), load_image(fresh_out))
    assert resumed["end_loss"] == uninterrupted["end_loss"]


def test_universal_with_target_and_prompt_files(capsys, tiny_llava_dir, image_file, tmp_path):
    targets = tmp_path / "corpus.csv"
    targets.write_text('"Sure, here it is."\n"I will help, no matter what."\nYes.\n')
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Describe the image.\n\nWhat is in the image?\n")
    assert load_targets(targets) == ["Sure, here it is.", "I will help, no matter what.", "Yes."]
    assert load_prompts(prompts) == ["Describe the image.", "What is in the image?"]
    argv = [
        "attack",
        "--model",
        str(tiny_llava_dir),
        "--image",
        str(image_file),
        "--prompts",
        str(prompts),
        "--targets",
        str(targets),
        "--targets-per-step",
        "2",
        "--unconstrained",
        "--steps",
        "2",
        "--max-new-tokens",
        "2",
        "--json",
    ]
    code, stdout, _ = run(capsys, argv)
    outcome = json.loads(stdout)
    assert code == 0 and outcome["config"]["eps"] is None
    assert outcome["target_generated"] is None  # no single target to look for
    assert outcome["config"]["prompts"] == load_prompts(prompts)


def test_untargeted_and_eot(capsys, tiny_llava_dir, image_file):
    argv = attack_args(
        tiny_llava_dir,
        image_file,
        "--untargeted",
        "--steps",
        "2",
        "--eot-samples",
        "2",
        "--noise-space",
        "pixel",
        "--sigma",
        "0.05",
        "--max-new-tokens",
        "3",
        "--json",
    )
    code, stdout, _ = run(capsys, argv)
    outcome = json.loads(stdout)
    assert code == 0
    assert outcome["config"]["objective"]["kind"] == "untargeted"
    assert outcome["config"]["eot"] == {
        "samples": 2,
        "clean": True,
        "sigma": 0.05,
        "noise_space": "pixel",
        "clamp": True,
    }


def test_adaptive_attack_through_the_purifier(capsys, tiny_llava_dir, image_file):
    """--eot-samples with --purifier: the adaptive attack on noise and purifier together, named in its record."""
    argv = attack_args(tiny_llava_dir, image_file, "--untargeted", "--steps", "1", "--eot-samples", "2")
    argv += ["--purifier", "testbed-denoiser", "--sigma", "0.1", "--max-new-tokens", "2", "--json"]
    code, stdout, _ = run(capsys, argv)
    eot = json.loads(stdout)["config"]["eot"]
    assert code == 0 and (eot["noise_space"], eot["sigma"], eot["samples"]) == ("pixel", 0.1, 2)
    assert eot["purifier"]["name"] == "testbed-denoiser" and len(eot["purifier"]["sha256"]) == 64


def test_audio_attack_saves_float_wav(capsys, tmp_path):

    model = save_tiny_qwen2_audio(tmp_path / "qwen-audio")
    clip = tmp_path / "tone.wav"
    t = np.arange(8000) / 16000
    sf.write(clip, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    out = tmp_path / "adv.wav"
    argv = [
        "attack",
        "--model",
        str(model),
        "--audio",
        str(clip),
        "--prompt",
        "What do you hear?",
        "--target",
        "A bird.",
        "--steps",
        "2",
        "--eps",
        "0.02",
        "--out",
        str(out),
        "--max-new-tokens",
        "2",
        "--json",
    ]
    code, stdout, _ = run(capsys, argv)
    outcome = json.loads(stdout)
    assert code == 0 and outcome["units"] == "amplitude units" and outcome["linf"] <= 0.02
    saved, rate = sf.read(out, dtype="float32")
    assert rate == 16000 and saved.shape == (8000,) and np.abs(saved).max() <= 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target", TARGET, "--eps", "-1"], "eps"),
        (["--target", TARGET, "--alpha", "0"], "alpha"),
        (["--targets", "/no/such/corpus.txt"], "/no/such/corpus.txt"),
        (["--target", TARGET, "--out", "/nonexistent-dir/adv.jpg"], "lossless"),
        (["--target", TARGET, "--steps", "-3"], "steps"),
    ],
)
def test_attack_user_errors_are_one_line(capsys, tiny_llava_dir, image_file, extra, message):
    code, out, err = run(capsys, attack_args(tiny_llava_dir, image_file, *extra))
    assert code == EXIT_USER_ERROR and out == ""
    assert err.startswith("smoothguard: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_attack_on_wrong_modality(capsys, tiny_llava_dir, tmp_path):
    clip = tmp_path / "tone.wav"
    sf.write(clip, np.zeros(1600, dtype=np.float32), 16000)
    argv = ["attack", "--model", str(tiny_llava_dir), "--audio", str(clip), "--prompt", "Hi", "--target", "x"]
    code, _, err = run(capsys, argv)
    assert code == EXIT_USER_ERROR and "image model" in err


def test_changed_settings_refuse_the_old_checkpoint(capsys, tiny_llava_dir, image_file, tmp_path):
    out = tmp_path / "adv.png"
    base = attack_args(
        tiny_llava_dir, image_file, "--target", TARGET, "--out", str(out), "--steps", "1", "--max-new-tokens", "2"
    )
    assert run(capsys, base)[0] == 0
    code, _, err = run(capsys, [*base, "--eps", "4"])
    assert code == EXIT_USER_ERROR and "another run" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["demo"],
        ["certify", "--model", "/no/such/model", "--benchmark", "testbed"],
        ["eval", "testbed-pope", "--model", "/no/such/model"],
        ["sweep", "testbed-pope", "--model", "/no/such/model", "--sigmas", "0.1"],
        ["testbed", "data"],
        ["testbed", "train"],
    ],
)
def test_an_output_folder_that_cannot_be_written_is_one_line_before_work(capsys, tmp_path, argv):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    one_line_error(capsys, [*argv, "--out", str(a_file / "run")], "is a file; pass a folder")
    one_line_error(capsys, [*argv, "--out", str(a_file)], "is a file; pass a folder")
    if Path("/proc/self").is_dir():  # a read-only file system, unwritable even for root
        one_line_error(capsys, [*argv, "--out", "/proc/smoothguard-run"], "cannot be written")


def test_attack_checks_its_output_and_target_before_attacking(capsys, tmp_path, image_file):
    argv = ["attack", "--model", "/no/such/model", "--image", str(image_file), "--prompt", "hi"]
    one_line_error(capsys, [*argv, "--target", "  "], "--target is empty")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    one_line_error(capsys, [*argv, "--target", "yes", "--out", str(a_file / "adv.png")], "is a file")
