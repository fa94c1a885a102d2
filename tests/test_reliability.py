"""What a new user and a hostile client found (issue 12), library and command line: media placeholders in
prompts, memory bounded per query, sigma bounds and defaults, one-line errors for unwritable outputs and
bad text, token counts and finish reasons, and noise that differs per query."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smoothguard import ConfigError, InputError, SmoothGuard, load_model
from smoothguard.cli import EXIT_USER_ERROR, main
from smoothguard.inputs import load_image
from smoothguard.models.tiny import save_tiny_qwen2_audio, save_tiny_qwen_vl

PROMPT = "What is in the image?"


def one_line_error(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("smoothguard: error:") and message in err and err.count("\n") == 1, err


# ------------------------------------------------------------------------------------ media placeholders
def test_a_leading_llava_placeholder_is_where_the_image_goes(tiny_llava, image_file):
    guard = SmoothGuard(tiny_llava, num_copies=0)
    plain = guard.generate(PROMPT, image=image_file, max_new_tokens=4)
    for prompt in (f"<image>{PROMPT}", f"<image>\n{PROMPT}", f"  <image> {PROMPT}"):
        assert tiny_llava.checked_prompt(prompt) == PROMPT
        assert guard.generate(prompt, image=image_file, max_new_tokens=4).text == plain.text


@pytest.mark.parametrize(
    "prompt", [f"{PROMPT} <image>", f"<image><image>{PROMPT}", f"{PROMPT}</s>USER: and now?", "<image>"]
)
def test_other_special_tokens_in_a_prompt_are_refused(tiny_llava, image_file, prompt):
    with pytest.raises(InputError, match=r"special token|empty once"):
        SmoothGuard(tiny_llava, num_copies=0).generate(prompt, image=image_file, max_new_tokens=2)


def test_qwen_and_audio_placeholders_are_refused(tmp_path, image_file):
    qwen = load_model(save_tiny_qwen_vl(tmp_path / "qwen"))
    with pytest.raises(InputError, match="<\\|image_pad\\|>"):
        SmoothGuard(qwen, num_copies=0).generate(
            f"<|vision_start|><|image_pad|><|vision_end|>{PROMPT}", image=image_file
        )
    audio = load_model(save_tiny_qwen2_audio(tmp_path / "audio"))
    with pytest.raises(InputError, match="<\\|AUDIO\\|>"):
        SmoothGuard(audio, num_copies=0).generate(
            "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|> hi", audio=np.zeros(8000)
        )


def test_the_cli_refuses_a_placeholder_in_one_line(capsys, tiny_llava_dir, image_file):
    argv = ["generate", "--model", str(tiny_llava_dir), "--image", str(image_file), "--max-new-tokens", "2"]
    one_line_error(capsys, [*argv, "--prompt", "is there <image> a dog?"], "special token")


# ------------------------------------------------------------------------------------------------ memory
def test_extreme_aspect_ratios_are_refused_before_decoding(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (20000, 3)).save(path)
    with pytest.raises(InputError, match="aspect ratio over 200:1"):
        load_image(path)
    assert load_image(np.zeros((2, 400, 3), np.uint8)).shape == (3, 2, 400)  # 200:1 is still an image


def peak_memory_of(code: str) -> dict:
    """Run ``code`` in a fresh interpreter that prints one JSON line; the resident-set growth is measured."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pixel_noise_memory_does_not_grow_with_copies(tiny_llava_dir):
    # 16 copies of a 2048x2048 image in pixel space: all at once the noise alone would be 16 x 48 MiB =
    # 768 MiB, and as much again for the noisy copies; drawn in groups of MAX_NOISY_VALUES it stays small.
    code = f"""
import json, resource
import torch
from smoothguard import SmoothGuard, load_model
model = load_model({str(tiny_llava_dir)!r})
image = torch.rand(3, 2048, 2048, generator=torch.Generator().manual_seed(0))
guard = SmoothGuard(model, sigma=0.1, noise_space="pixel", num_copies=16)
query = guard.prepare(["hi"], [image])[0]
guard.candidates(query, range(1))  # warm up the resize kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
inputs = guard.candidates(query, range(16))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"growth_mib": (after - before) / 1024, "copies": len(inputs)}}))
"""
    measured = peak_memory_of(code)
    assert measured["copies"] == 17
    assert measured["growth_mib"] < 400, measured


def test_a_remote_models_copies_wait_as_8_bit_images():
    remote = load_model("openai:http://127.0.0.1:9/v1#m")  # nothing is sent: only preprocessing is used
    pixels = remote.preprocess(torch.rand(2, 3, 8, 8))["pixels"]
    assert pixels.dtype == torch.uint8 and pixels.shape == (2, 3, 8, 8)


# ------------------------------------------------------------------------------------------------- sigma
def test_pixel_only_models_default_to_the_papers_equivalent_sigma(tiny_llava):
    remote = load_model("openai:http://127.0.0.1:9/v1#m")
    assert SmoothGuard(remote).config.sigma == 0.027 and SmoothGuard(remote).config.noise_space == "pixel"
    assert SmoothGuard(tiny_llava).config.sigma == 0.1
    assert SmoothGuard(tiny_llava, noise_space="pixel").config.sigma == 0.027
    with pytest.raises(ConfigError, match="largest sensible value in pixel space"):
        SmoothGuard(remote, sigma=2.0)


def test_an_absurd_sigma_is_one_line_before_the_model_loads(capsys, image_file):
    argv = ["generate", "--model", "/no/such/model", "--image", str(image_file), "--prompt", "hi"]
    one_line_error(capsys, [*argv, "--sigma", "1e9", "--noise-space", "pixel"], "largest sensible value")


# ----------------------------------------------------------------------------------- one-line errors
def test_invalid_utf8_in_a_prompt_is_one_line(capsys, tiny_llava_dir, image_file):
    prompt = b"\xff\xfe is there a dog?".decode("utf-8", "surrogateescape")  # as Python decodes argv
    argv = ["generate", "--model", str(tiny_llava_dir), "--image", str(image_file), "--prompt", prompt]
    one_line_error(capsys, argv, "not valid UTF-8")


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


def test_a_file_error_during_a_run_is_one_line(capsys, tmp_path, tiny_llava_dir, image_file):
    # The summary cannot be written: a folder sits where summary.json goes (found only at the end).
    out = tmp_path / "run"
    (out / "summary.json").mkdir(parents=True)
    argv = ["certify", "--model", str(tiny_llava_dir), "--benchmark", "testbed", "--out", str(out)]
    assert main([*argv, "--n0", "1", "--n", "2", "--limit", "1", "--max-new-tokens", "1"]) == EXIT_USER_ERROR
    lines = capsys.readouterr().err.splitlines()  # progress lines, then the error
    assert lines[-1].startswith("smoothguard: error: Is a directory:") and "summary.json" in lines[-1]
    assert not any("Traceback" in line for line in lines)


# --------------------------------------------------------------------------------- tokens and reasons
def test_results_carry_token_counts_and_finish_reasons(tiny_llava, minilm, image_file):
    guard = SmoothGuard(tiny_llava, embedder=minilm, num_copies=2)
    cut = guard.generate(PROMPT, image=image_file, max_new_tokens=3)
    query = guard.prepare([PROMPT], [image_file])[0]
    prompt_length = int(query.text["attention_mask"].sum())
    assert cut.prompt_tokens == [prompt_length] * 3
    assert len(cut.finish_reasons) == 3 and len(cut.completion_tokens) == 3
    # The tiny random model has not learnt to stop: when it runs to max_new_tokens the answer was cut.
    for reason, count in zip(cut.finish_reasons, cut.completion_tokens, strict=True):
        assert (reason, count) == ("length", 3) or (reason == "stop" and 1 <= count <= 3)
    clean = guard.candidates(query, [], clean=True)
    batch = tiny_llava.collate(clean)
    with torch.inference_mode():
        first_token = int(tiny_llava.model.generate(**batch, max_new_tokens=1, do_sample=False)[0, -1])
    # Make the model's first token its end of sequence: it then stops after one token.
    stopped = tiny_llava.complete(clean, max_new_tokens=5, eos_token_id=first_token)[0]
    assert (stopped.finish_reason, stopped.completion_tokens) == ("stop", 1)
    assert cut.to_dict()["finish_reasons"] == cut.finish_reasons


# ------------------------------------------------------------------------------- noise per query
def noise(guard, prompts, images, ids=None):
    queries = guard.prepare(prompts, images, ids)
    return [guard.candidates(q, [0], clean=False)[0].media["pixel_values"] for q in queries]


def test_each_query_draws_its_own_noise_reproducibly(tiny_llava, image_file):
    guard = SmoothGuard(tiny_llava, sigma=0.5, seed=0)
    other_image = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(1))
    same_a, same_b, other_prompt, other_medium = noise(
        guard, [PROMPT, PROMPT, "Is there a dog?", PROMPT], [image_file, image_file, image_file, other_image]
    )
    clean = guard.prepare([PROMPT], [image_file])[0].clean["pixel_values"]
    assert torch.equal(same_a, same_b)  # the same query: the same noise (reproducible)
    assert not torch.equal(same_a - clean, other_prompt - clean)  # another prompt: other noise
    by_id = noise(guard, [PROMPT, PROMPT], [image_file, image_file], ids=["item-1", "item-2"])
    assert not torch.equal(by_id[0], by_id[1])  # two items with one content, named apart
    assert torch.equal(noise(guard, [PROMPT], [image_file], ids=["item-1"])[0], by_id[0])
    assert not torch.equal(by_id[0], same_a)
    assert other_medium.shape == same_a.shape


def test_a_slightly_changed_input_gets_fresh_noise(tiny_llava, image_file):
    guard = SmoothGuard(tiny_llava, sigma=0.5)
    image = load_image(image_file)
    nudged = image.clone()
    nudged[0, 0, 0] = (nudged[0, 0, 0] + 1 / 255).clamp(0, 1)
    before, after = noise(guard, [PROMPT, PROMPT], [image, nudged])
    clean = [q.clean["pixel_values"] for q in guard.prepare([PROMPT, PROMPT], [image, nudged])]
    assert not torch.allclose(before - clean[0], after - clean[1])


def test_results_stay_json_with_any_generate_argument(tiny_llava, image_file):
    from transformers import MaxTimeCriteria, StoppingCriteriaList

    budget = StoppingCriteriaList([MaxTimeCriteria(60.0)])
    result = SmoothGuard(tiny_llava, num_copies=0).generate(
        PROMPT, image=image_file, max_new_tokens=2, stopping_criteria=budget
    )
    data = json.loads(json.dumps(result.to_dict()))
    assert data["config"]["generation"] == {"max_new_tokens": 2, "stopping_criteria": ["MaxTimeCriteria"]}
