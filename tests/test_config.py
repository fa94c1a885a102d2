"""GuardConfig, the guard built from it, the command-line options built from it, and the one sampler's
per-copy seed rule."""

import json
import os
import subprocess
import sys

import pytest
import torch

from smoothguard import AdaptiveSampling, ConfigError, GuardConfig, SmoothGuard
from smoothguard.certify import noisy_answers
from smoothguard.cli.main import build_parser
from smoothguard.cli.options import guard_config
from smoothguard.eval import GuardSpec, evaluate
from smoothguard.noise import copy_seed

PROMPT = "What is in the image?"


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sigma": -1}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"sigma": 1.5, "noise_space": "pixel"}, "largest sensible value in pixel space"),
        ({"sigma": 4.5, "noise_space": "normalized"}, "largest sensible value in normalized space"),
        ({"sigma": 1e9, "noise_space": "waveform"}, "largest sensible value in waveform space"),
        ({"noise_space": "latent"}, "noise space"),
        ({"num_copies": -1}, "num_copies"),
        ({"num_copies": 2.0}, "num_copies"),
        ({"seed": 2**32}, "seed"),
        ({"num_clusters": 0}, "num_clusters"),
        ({"batch_size": 0}, "batch_size"),
        ({"clamp": "no"}, "clamp"),
        ({"embedder": ""}, "embedder"),
        ({"adaptive": "yes"}, "adaptive"),
        ({"sigmaa": 0.1}, "unknown guard setting"),
    ],
)
def test_config_refuses_bad_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        GuardConfig.of(**settings)


def test_config_defaults_replace_and_dict():
    config = GuardConfig()
    assert (config.sigma, config.num_copies, config.noise_space, config.num_clusters) == (None, 10, None, 2)
    assert config.resolve("normalized").sigma == 0.1 and config.resolve("pixel").sigma == 0.027
    assert config.replace(sigma=0.3).resolve("pixel") == GuardConfig(sigma=0.3, noise_space="pixel")
    assert GuardConfig(noise_space="waveform").resolve("pixel").noise_space == "waveform"
    assert config.defended and not config.replace(num_copies=0).defended
    assert config.replace(adaptive=True).adaptive == AdaptiveSampling()
    assert config.replace(adaptive=False).adaptive is None
    assert "adaptive" not in config.to_dict()
    assert config.replace(adaptive=True).to_dict()["adaptive"] == {"alpha": 0.05, "round_size": 2}
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()
    with pytest.raises(ConfigError, match="sigma"):
        config.replace(sigma=-0.5)
    with pytest.raises(dataclasses_frozen_error()):
        config.sigma = 0.2  # type: ignore[misc]


def dataclasses_frozen_error() -> type[Exception]:
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_guard_config_is_resolved_and_replace_shares_model_and_embedder(tiny_llava, minilm):
    guard = SmoothGuard(tiny_llava, embedder=minilm, sigma=0.3)
    assert guard.config.noise_space == tiny_llava.default_noise_space == "normalized"
    assert guard.config.sigma == 0.3 and guard.config.embedder == minilm.name
    assert SmoothGuard.from_config(tiny_llava, guard.config, embedder=minilm).config == guard.config
    other = guard.replace(sigma=0.5, num_copies=3)
    assert other.config == guard.config.replace(sigma=0.5, num_copies=3)
    assert other.model is guard.model and other.embedder is minilm
    assert other.noise.sigma == 0.5
    assert guard.replace(embedder="minilm")._embedder is None  # another embedder: loaded anew, on first use
    with pytest.raises(ConfigError, match="noise space"):
        guard.replace(noise_space="waveform")
    with pytest.raises(ConfigError, match="unknown guard setting"):
        SmoothGuard(tiny_llava, sigmaa=0.1)


def test_result_config_is_the_resolved_config(tiny_llava, minilm, image_file):
    guard = SmoothGuard(tiny_llava, embedder=minilm, num_copies=2)
    described = guard.generate(PROMPT, image=image_file, max_new_tokens=2).config
    assert {key: described[key] for key in guard.config.to_dict()} == {
        **guard.config.to_dict(),
        "embedder": minilm.name,
    }
    assert described["noise_space"] == "normalized" and described["model"]["family"] == "llava"


# ----------------------------------------------------------------------------------------------- options
ALL_OPTIONS = [
    *("--sigma", "0.3", "--num-copies", "4", "--noise-space", "pixel", "--seed", "7", "--no-clamp"),
    *("--num-clusters", "3", "--embedder", "minilm", "--batch-size", "5", "--adaptive"),
]
EXPECTED = GuardConfig(
    sigma=0.3,
    num_copies=4,
    noise_space="pixel",
    seed=7,
    clamp=False,
    num_clusters=3,
    embedder="minilm",
    batch_size=5,
    adaptive=True,
)


@pytest.mark.parametrize(
    "command",
    [
        ["generate", "--model", "m", "--image", "x.png", "--prompt", "hi"],
        ["attack", "--model", "m", "--image", "x.png", "--prompt", "hi", "--target", "t"],
        ["eval", "pope", "--model", "m"],
        ["serve", "--model", "m"],
        ["demo"],
    ],
)
def test_every_entry_point_has_every_guard_option(command):
    args = build_parser().parse_args([*command, *ALL_OPTIONS])
    assert guard_config(args) == EXPECTED
    defaults = guard_config(build_parser().parse_args(command))
    if command == ["demo"]:  # the demo's own defaults: the paper's sigma in normalized space, 4 copies
        from smoothguard.testbed.ladder import DemoConfig

        assert defaults == DemoConfig().guard == GuardConfig(noise_space="normalized", sigma=0.1, num_copies=4)
    else:
        assert defaults.replace(noise_space=None) == GuardConfig()


def test_sweep_and_certify_take_the_guard_options_that_apply():
    sweep = build_parser().parse_args(["sweep", "pope", "--model", "m", "--sigmas", "0.1", *ALL_OPTIONS[2:]])
    assert guard_config(sweep, sigma=0.3) == EXPECTED
    certify = ["certify", "--model", "m", "--benchmark", "testbed"]
    args = build_parser().parse_args([*certify, "--noise-space", "normalized", "--seed", "4", "--batch-size", "9"])
    assert guard_config(args) == GuardConfig(noise_space="normalized", seed=4, batch_size=9)
    assert guard_config(build_parser().parse_args(certify)) == GuardConfig(noise_space="pixel", batch_size=128)
    with pytest.raises(SystemExit):
        build_parser().parse_args([*certify, "--num-copies", "3"])  # certification samples; it has no vote


def run_without_model(code: str) -> dict:
    """Run ``code`` in a fresh interpreter and return what it prints as JSON."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


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


def test_import_smoothguard_imports_nothing_heavy():
    code = """
import json, sys
import smoothguard
print(json.dumps({name: name in sys.modules for name in ("torch", "transformers", "scipy", "sklearn", "fastapi")}))
"""
    assert not any(run_without_model(code).values())


# ----------------------------------------------------------------------------------------- the sampler
def noise_of(guard, query, copies, clean=False):
    key = guard.model.normalized_key
    return [q.media[key] for q in guard.candidates(query, copies, clean=clean)]


def test_copy_i_is_the_same_noise_wherever_it_is_drawn(tiny_llava, minilm):
    guard = SmoothGuard(tiny_llava, embedder=minilm, sigma=0.5, noise_space="pixel", seed=11)
    query = guard.prepare([PROMPT], [torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0))])[0]
    full = noise_of(guard, query, range(10))
    assert [torch.equal(a, b) for a, b in zip(noise_of(guard, query, range(3, 6)), full[3:6], strict=True)] == [
        True
    ] * 3
    assert torch.equal(noise_of(guard, query, [7])[0], full[7])
    assert not torch.equal(full[0], full[1])
    other_seed = noise_of(guard.replace(seed=12), query, range(1))[0]
    assert not torch.equal(other_seed, full[0])
    assert copy_seed(11, 3) == copy_seed(11, 3) != copy_seed(11, 4)


def test_guard_adaptive_and_certify_answer_the_same_copies(tiny_llava, minilm, image_file):
    # Normalized sigma 1.0 makes this tiny model's answers differ between copies (checked: > 1 distinct).
    guard = SmoothGuard(tiny_llava, embedder=minilm, sigma=1.0, num_copies=10, seed=2)
    result = guard.generate(PROMPT, image=image_file, max_new_tokens=4)
    assert result.num_distinct > 1
    noisy = result.candidates[1:]
    query = guard.prepare([PROMPT], [image_file])
    assert guard.sample(query, range(10), max_new_tokens=4)[0] == noisy
    assert guard.replace(batch_size=3).sample(query, range(4, 10), max_new_tokens=4)[0] == noisy[4:]
    assert noisy_answers(guard, PROMPT, image_file, range(10), max_new_tokens=4) == noisy
    assert guard.sample(query, range(2), clean=True, max_new_tokens=4)[0] == result.candidates[:3]
    adaptive = guard.replace(adaptive=True).generate(PROMPT, image=image_file, max_new_tokens=4)
    assert adaptive.candidates == result.candidates[: adaptive.copies_used + 1]


def test_eval_records_the_resolved_noise_space(tmp_path, tiny_llava, tiny_llava_dir):
    from eval_support import make_pope_folder

    pope = make_pope_folder(tmp_path / "pope", per_split=1)
    spec = GuardSpec(model=str(tiny_llava_dir), guard=GuardConfig(num_copies=1))
    summary = evaluate("pope", spec, tmp_path / "run", data=pope, model=tiny_llava, max_new_tokens=2, limit=1)
    defense = summary["settings"]["guard"]["defense"]
    assert defense["noise_space"] == "normalized" and defense["sigma"] == 0.1
    expected = GuardConfig(num_copies=1).resolve("normalized").to_dict()
    assert defense == {k: v for k, v in expected.items() if k != "batch_size"}
