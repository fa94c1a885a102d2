"""The testbed's purifier ``testbed-denoiser``: the purifier contract, training (resumable), the shipped
model's quality on held-out scenes, loading errors and the two CLI actions."""

import hashlib
import json

import pytest
import torch

from smoothguard.errors import ConfigError, InputError, ModelLoadError
from smoothguard.purify import load_purifier
from smoothguard.testbed import denoiser
from smoothguard.testbed.denoiser import (
    SHIPPED,
    DenoiserConfig,
    evaluate_denoiser,
    load,
    train_denoiser,
    training_batch,
)

TINY = {"channels": (4, 8), "batch_size": 2, "probe_scenes": 2, "warmup": 1}


@pytest.fixture(scope="module")
def shipped() -> denoiser.TestbedDenoiser:
    torch.set_num_threads(1)
    return load()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_range_and_dtype_are_kept_for_odd_sizes(shipped, dtype):
    images = torch.rand(2, 3, 37, 29, generator=torch.Generator().manual_seed(0), dtype=dtype)
    out = shipped(images, 0.25)
    assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, images)


def test_gradients_reach_the_input_and_not_the_frozen_weights(shipped):
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    shipped(images, 0.1).square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in shipped.parameters())
    assert not shipped.training


def test_bad_inputs_are_one_line_errors(shipped):
    with pytest.raises(InputError, match=r"images \[B, 3, H, W\], got \(3, 8, 8\)"):
        shipped(torch.zeros(3, 8, 8), 0.1)
    with pytest.raises(ConfigError, match="sigma must be a finite number >= 0"):
        shipped(torch.zeros(1, 3, 8, 8), -0.1)
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        DenoiserConfig(steps=0)
    with pytest.raises(ConfigError, match=r"sigma_max must be a number in \[0, 1.0\]"):
        DenoiserConfig(sigma_max=2.0)


def test_the_shipped_denoiser_lowers_the_error_of_held_out_noisy_scenes(shipped):
    report = evaluate_denoiser(shipped, scenes=48, sigmas=(0.1, 0.25), seed=3)
    assert report["scenes"] == 48 and set(report["sigmas"]) == {"0.1", "0.25"}
    for row in report["sigmas"].values():
        assert row["mse_denoised"] < 0.5 * row["mse_noisy"]  # at least 3 dB better
        assert row["psnr_denoised"] > row["psnr_noisy"] + 3


def test_the_shipped_denoiser_is_a_small_plugin_with_provenance(shipped):
    weights = SHIPPED / "model.safetensors"
    assert weights.stat().st_size <= 5 * 2**20
    described = shipped.describe()
    assert (
        described["name"] == "testbed-denoiser"
        and described["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    )
    assert described["parameters"] == sum(p.numel() for p in shipped.parameters())
    assert described["training"]["sigma_max"] == 0.5
    assert json.loads((SHIPPED / "purifier.json").read_text()) == {"purifier": "testbed-denoiser"}
    assert isinstance(load_purifier("testbed-denoiser"), denoiser.TestbedDenoiser)
    assert isinstance(load_purifier(str(SHIPPED)), denoiser.TestbedDenoiser)


def test_training_batches_are_a_pure_function_of_seed_and_step():
    config = DenoiserConfig(batch_size=64)
    clean, noisy, sigmas = training_batch(config, 5)
    again = training_batch(config, 5)
    assert all(torch.equal(a, b) for a, b in zip((clean, noisy, sigmas), again, strict=True))
    assert not torch.equal(clean, training_batch(config, 6)[0])
    assert clean.shape == noisy.shape == (64, 3, 64, 64) and sigmas.shape == (64,)
    assert noisy.min() >= 0 and noisy.max() <= 1 and sigmas.min() >= 0 and sigmas.max() <= 0.5
    assert torch.equal(noisy[sigmas == 0], clean[sigmas == 0])


def test_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    config = DenoiserConfig(steps=4, checkpoint_every=2, probe_every=2, **TINY)
    whole = train_denoiser(config, tmp_path / "whole", progress=False, log=lambda line: None)

    def stop_at_step_3(config, step):
        if step == 3:
            raise KeyboardInterrupt
        return training_batch(config, step)

    monkeypatch.setattr(denoiser, "training_batch", stop_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_denoiser(config, tmp_path / "resumed", progress=False, log=lambda line: None)
    assert not (tmp_path / "resumed" / "model").exists()
    monkeypatch.undo()
    lines: list[str] = []
    resumed = train_denoiser(config, tmp_path / "resumed", progress=False, log=lines.append)
    assert lines[0] == "resuming at step 2"
    first, second = load(str(whole)).state_dict(), load(str(resumed)).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    histories = [json.loads((folder / "training_history.json").read_text()) for folder in (whole, resumed)]
    for history in histories:
        for entry in history:
            entry.pop("seconds")
    assert histories[0] == histories[1] and [entry["step"] for entry in histories[0]] == [2, 4]
    with pytest.raises(ConfigError, match="other settings"):
        train_denoiser(DenoiserConfig(steps=5, **TINY), tmp_path / "whole", progress=False, log=lambda line: None)


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder") as missing:
        load(str(tmp_path / "nope"))
    folder = train_denoiser(DenoiserConfig(steps=1, **TINY), tmp_path / "run", progress=False, log=lambda line: None)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors cannot be loaded") as corrupt:
        load(str(folder))
    (folder / "config.json").write_text("{")
    with pytest.raises(ModelLoadError, match="not a valid denoiser config"):
        load(str(folder))
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is missing"):
        load(str(folder))
    assert all("\n" not in str(error.value) for error in (missing, corrupt))
