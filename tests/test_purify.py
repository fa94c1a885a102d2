"""The purifier stage (denoised smoothing) and the vote on parsed answers, on a tiny random LLaVA."""

import json
import sys

import numpy as np
import pytest
import torch

from smoothguard import ConfigError
from smoothguard.errors import InputError, ModelLoadError
from smoothguard.purify import (
    DIFFUSION_CHUNK,
    CallablePurifier,
    DiffusionPurifier,
    check_purifier_spec,
    load_purifier,
    purifier_names,
)
from support.guard import Recorder, grey


def test_callable_purifiers_are_wrapped_with_or_without_sigma():
    images = torch.rand(2, 3, 5, 7)
    wrapped = load_purifier(grey)
    assert isinstance(wrapped, CallablePurifier) and wrapped.name == "grey"
    assert torch.equal(wrapped(images, 0.3), torch.full_like(images, 0.5))
    recorder = Recorder()
    assert load_purifier(recorder) is recorder  # a purifier with name and sigma is used as it is
    assert load_purifier(lambda images, sigma: images * sigma)(images, 0.5).allclose(images / 2)
    with pytest.raises(ConfigError, match="callable"):
        CallablePurifier(3)


def test_unknown_purifier_and_folders_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown purifier .nope.*testbed-denoiser"):
        check_purifier_spec("nope")
    with pytest.raises(ConfigError, match="diffusion: needs"):
        check_purifier_spec("diffusion:")
    with pytest.raises(ConfigError, match=r"holds no purifier\.json"):
        load_purifier(str(tmp_path))
    (tmp_path / "purifier.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"not a valid purifier\.json"):
        load_purifier(str(tmp_path))
    (tmp_path / "purifier.json").write_text(json.dumps({"purifier": "no-such-plugin"}))
    with pytest.raises(ConfigError, match="'no-such-plugin', which is not installed"):
        load_purifier(str(tmp_path))
    assert "testbed-denoiser" in purifier_names()


diffusers = pytest.importorskip("diffusers")


def tiny_unet(**changes) -> "diffusers.UNet2DModel":
    torch.manual_seed(0)
    settings = dict(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
    )
    return diffusers.UNet2DModel(**{**settings, **changes})


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny random DDPMs in each layout: a bare UNet folder, a pipeline folder (unet/ + scheduler/), a UNet folder
    with its own scheduler_config.json beside it (the google/ddpm-* layout), and pipelines of other kinds."""
    root = tmp_path_factory.mktemp("ddpm")
    unet = tiny_unet()
    unet.save_pretrained(root / "bare")
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(root / "pipeline")
    unet.save_pretrained(root / "flat")
    flat_schedule = diffusers.DDPMScheduler(num_train_timesteps=200, beta_schedule="squaredcos_cap_v2")
    flat_schedule.save_pretrained(root / "flat")
    for kind in ("sample", "v_prediction", "flow"):
        scheduler = diffusers.DDPMScheduler(prediction_type=kind)
        diffusers.DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(root / kind)
    return {"root": root, "flat_schedule": flat_schedule} | {
        name: str(root / name) for name in ("bare", "pipeline", "flat", "sample", "v_prediction", "flow")
    }


@pytest.fixture(scope="module")
def one_shot(folders) -> DiffusionPurifier:
    return load_purifier("diffusion:" + folders["bare"])


def linear_noise_levels() -> np.ndarray:
    """sqrt((1 - abar_t) / abar_t) of the DDPM linear schedule (beta 1e-4 to 0.02, 1000 steps), in float64."""
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    return np.sqrt((1 - abar) / abar)


def test_timestep_matches_the_noise_level_of_twice_sigma(one_shot):
    levels = linear_noise_levels()
    sigmas = [0.005, 0.01, 0.03, 0.05, 0.1, 0.12, 0.25, 0.5, 1.0]
    chosen = [one_shot.timestep(sigma) for sigma in sigmas]
    assert chosen == [int(np.argmin(np.abs(levels - 2 * sigma))) for sigma in sigmas]
    assert chosen[sigmas.index(0.25)] == 144 and chosen[sigmas.index(0.5)] == 258
    assert chosen == sorted(chosen) and len(set(chosen)) == len(chosen)  # monotone in sigma
    assert one_shot.timestep(100.0) == 999  # beyond the schedule: its last step
    assert one_shot.timestep(0) is None and one_shot.timestep(0.0) is None
    images = torch.rand(2, 3, 20, 28)
    assert one_shot(images, 0.0) is images  # sigma 0: no purification at all
    for bad in (-0.1, float("nan"), True, "0.1"):
        with pytest.raises(ConfigError, match="sigma must be a finite number >= 0"):
            one_shot.timestep(bad)


def test_a_unet_folder_uses_the_schedule_saved_beside_it(folders):
    purifier = load_purifier("diffusion:" + folders["flat"])
    assert purifier.describe()["num_train_timesteps"] == 200
    abar = folders["flat_schedule"].alphas_cumprod.double().numpy()
    levels = np.sqrt((1 - abar) / abar)
    assert purifier.timestep(0.1) == int(np.argmin(np.abs(levels - 0.2)))
    assert load_purifier("diffusion:" + folders["bare"]).describe()["num_train_timesteps"] == 1000  # the default


@pytest.mark.parametrize("steps", [1, 3])
def test_output_has_the_input_shape_and_stays_in_range(folders, steps):
    purifier = DiffusionPurifier.from_pretrained(folders["pipeline"], steps=steps)
    images = torch.rand(2, 3, 20, 28)  # not square and not the UNet's 16 x 16
    out = purifier(images, 0.25)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, images)
    square = torch.rand(1, 3, 16, 16)
    assert purifier(square, 0.1).shape == square.shape


def test_one_shot_is_the_x0_estimate_of_the_matched_timestep(folders):
    """Carlini et al.: x_t = sqrt(abar) (2x - 1), x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), clamped, back to [0, 1];
    for "sample" the UNet's output is x0, for "v_prediction" x0 = sqrt(abar) x_t - sqrt(1 - abar) v."""
    unet = tiny_unet().eval()
    images = torch.rand(3, 3, 16, 16)
    abar = float(diffusers.DDPMScheduler().alphas_cumprod[57])
    x_t = abar**0.5 * (2 * images - 1)
    with torch.no_grad():
        output = unet(x_t, 57).sample
    x0 = {
        "pipeline": (x_t - (1 - abar) ** 0.5 * output) / abar**0.5,
        "sample": output,
        "v_prediction": abar**0.5 * x_t - (1 - abar) ** 0.5 * output,
    }
    for folder, estimate in x0.items():
        purifier = load_purifier("diffusion:" + folders[folder])
        assert purifier.timestep(0.1) == 57
        with torch.no_grad():
            out = purifier(images, 0.1)
        assert torch.allclose(out, ((estimate.clamp(-1, 1) + 1) / 2).clamp(0, 1), atol=1e-5), folder


def test_k_steps_are_ddpm_ancestral_steps_from_t_star_to_zero(folders):
    """The K-step purifier equals diffusers' own DDPMScheduler loop on the timesteps t*, ..., 0 (evenly spaced) with
    a CPU generator seeded with the purifier's seed."""
    purifier = DiffusionPurifier.from_pretrained(folders["pipeline"], steps=4, seed=7)
    images = torch.rand(2, 3, 16, 16)
    start = purifier.timestep(0.1)
    timesteps = [round(start * (3 - i) / 3) for i in range(4)]
    assert timesteps == [57, 38, 19, 0]
    scheduler = diffusers.DDPMScheduler()
    scheduler.set_timesteps(timesteps=timesteps)
    unet, generator = tiny_unet().eval(), torch.Generator().manual_seed(7)
    with torch.no_grad():
        x = float(scheduler.alphas_cumprod[start]) ** 0.5 * (2 * images - 1)
        for t in timesteps:
            step = scheduler.step(unet(x, t).sample, t, x, generator=generator)
            x = step.prev_sample
        out = purifier(images, 0.1)
    assert torch.allclose(out, (x.clamp(-1, 1) + 1) / 2, atol=1e-4)
    tiny_start = DiffusionPurifier.from_pretrained(folders["pipeline"], steps=10)
    calls: list[int] = []
    tiny_start.unet.register_forward_hook(lambda module, args, output: calls.append(int(args[1])))
    tiny_start(images, 0.01)  # t* = 2 < K - 1: the distinct timesteps 2, 1, 0 only
    assert calls == [2, 1, 0]


def test_same_seed_same_output_and_stochastic_steps_differ_across_seeds(folders):
    images = torch.rand(2, 3, 20, 28)
    one = DiffusionPurifier.from_pretrained(folders["pipeline"])
    assert torch.equal(one(images, 0.2), one(images, 0.2))
    other_seed = DiffusionPurifier.from_pretrained(folders["pipeline"], seed=1)
    assert torch.equal(one(images, 0.2), other_seed(images, 0.2))  # one shot draws nothing
    many = DiffusionPurifier.from_pretrained(folders["pipeline"], steps=3, seed=0)
    again = DiffusionPurifier.from_pretrained(folders["pipeline"], steps=3, seed=0)
    first = many(images, 0.2)
    assert torch.equal(first, many(images, 0.2)) and torch.equal(first, again(images, 0.2))
    reseeded = DiffusionPurifier.from_pretrained(folders["pipeline"], steps=3, seed=1)
    assert not torch.allclose(first, reseeded(images, 0.2))


@pytest.mark.parametrize("steps", [1, 3])
def test_the_gradient_reaches_the_input_pixels(folders, steps):
    purifier = DiffusionPurifier.from_pretrained(folders["pipeline"], steps=steps)
    assert not purifier.unet.training and not any(p.requires_grad for p in purifier.unet.parameters())
    images = torch.rand(2, 3, 20, 28).requires_grad_()
    purifier(images, 0.1).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in purifier.unet.parameters())


def test_large_batches_run_in_chunks_with_the_same_result(one_shot):
    sizes: list[int] = []
    handle = one_shot.unet.register_forward_hook(lambda module, args, output: sizes.append(args[0].shape[0]))
    images = torch.rand(DIFFUSION_CHUNK + 4, 3, 12, 12)
    try:
        with torch.no_grad():
            together = one_shot(images, 0.1)
            apart = torch.cat([one_shot(images[:5], 0.1), one_shot(images[5:], 0.1)])
    finally:
        handle.remove()
    assert sizes[:2] == [DIFFUSION_CHUNK, 4] and max(sizes) <= DIFFUSION_CHUNK
    assert torch.allclose(together, apart, atol=1e-6)


def test_diffusion_specs_load_one_shot_and_k_step_purifiers(folders):
    assert check_purifier_spec(" diffusion:" + folders["pipeline"] + "@3 ") == "diffusion:" + folders["pipeline"] + "@3"
    one = load_purifier("diffusion:" + folders["pipeline"], device="cpu")
    assert isinstance(one, DiffusionPurifier) and one.steps == 1 and one.name == "diffusion:" + folders["pipeline"]
    three = load_purifier("diffusion:" + folders["pipeline"] + "@3")
    assert three.steps == 3 and three.name == "diffusion:" + folders["pipeline"] + "@3"
    assert load_purifier("diffusion:" + folders["bare"] + "@1").name == "diffusion:" + folders["bare"]
    assert three.to("cpu") is three


def test_describe_names_the_model_and_its_settings(folders):
    purifier = DiffusionPurifier.from_pretrained(folders["v_prediction"], steps=5, seed=3)
    assert purifier.describe() == {
        "name": "diffusion:" + folders["v_prediction"] + "@5",
        "kind": "diffusion",
        "source": folders["v_prediction"],
        "steps": 5,
        "seed": 3,
        "sample_size": 16,
        "parameters": sum(p.numel() for p in tiny_unet().parameters()),
        "prediction_type": "v_prediction",
        "num_train_timesteps": 1000,
    }
    json.dumps(purifier.describe())


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def test_bad_specs_and_folders_are_one_line_errors(folders, tmp_path):
    for steps in ("0", "x", "", "-1", "1.5", " "):
        with pytest.raises(ConfigError, match="integer >= 1") as error:
            check_purifier_spec("diffusion:" + folders["pipeline"] + "@" + steps)
        one_line(error)
    with pytest.raises(ConfigError, match="diffusion: needs"):
        load_purifier("diffusion:@3")
    with pytest.raises(ModelLoadError, match="no such folder") as error:
        load_purifier("diffusion:" + str(tmp_path / "missing"))
    one_line(error)
    with pytest.raises(ModelLoadError, match="holds no diffusers UNet") as error:
        load_purifier("diffusion:" + str(tmp_path))
    one_line(error)
    tiny_unet().save_config(tmp_path / "no-weights")
    with pytest.raises(ModelLoadError, match=r"cannot load diffusion model.*no file named") as error:
        load_purifier("diffusion:" + str(tmp_path / "no-weights"))
    one_line(error)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load diffusion model") as error:
        load_purifier("diffusion:" + str(tmp_path / "corrupt"))
    one_line(error)
    with pytest.raises(ModelLoadError, match=r"cannot load diffusion model 'nobody/no-such-ddpm'.*cache") as error:
        load_purifier("diffusion:nobody/no-such-ddpm")  # offline (conftest) and not cached
    one_line(error)
    with pytest.raises(ConfigError, match="predicts 'flow'; supported epsilon, sample, v_prediction") as error:
        load_purifier("diffusion:" + folders["flow"])
    one_line(error)


def test_unsupported_models_and_inputs_are_refused(folders, tmp_path):
    tiny_unet(out_channels=6).save_pretrained(tmp_path / "learned-variance")
    with pytest.raises(ModelLoadError, match="maps 3 to 6 channels"):
        load_purifier("diffusion:" + str(tmp_path / "learned-variance"))
    tiny_unet(num_class_embeds=10).save_pretrained(tmp_path / "conditional")
    with pytest.raises(ModelLoadError, match="class-conditional"):
        load_purifier("diffusion:" + str(tmp_path / "conditional"))
    score_sde = tmp_path / "score-sde"
    tiny_unet().save_pretrained(score_sde / "unet")
    (score_sde / "scheduler").mkdir()
    (score_sde / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "ScoreSdeVeScheduler", "sigma_min": 0.01, "sigma_max": 1348.0})
    )
    with pytest.raises(ModelLoadError, match="has no beta schedule"):
        load_purifier("diffusion:" + str(score_sde))
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        DiffusionPurifier.from_pretrained(folders["bare"], steps=0)
    purifier = load_purifier("diffusion:" + folders["bare"])
    with pytest.raises(InputError, match=r"images \[B, 3, H, W\], got \(3, 16, 16\)"):
        purifier(torch.rand(3, 16, 16), 0.1)


def test_without_diffusers_the_error_says_what_to_install(monkeypatch, folders):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ModelLoadError, match=r"needs diffusers: pip install 'smoothguard\[diffusion\]'"):
        DiffusionPurifier.from_pretrained(folders["bare"])
