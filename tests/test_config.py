"""GuardConfig, the guard built from it, the command-line options built from it, and the one sampler's
per-copy seed rule."""

from __future__ import annotations

import dataclasses
import json

import pytest

from smoothguard import AdaptiveSampling, ConfigError, GuardConfig
from support.common import names_word


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


def test_every_guard_setting_has_help_text():
    """``_help``: ``{"help": text}`` -> key "XXhelpXX" / "HELP" (the command-line options read
    ``metadata["help"]``)."""
    for setting in dataclasses.fields(GuardConfig):
        assert setting.metadata["help"].strip(), setting.name


def test_config_unknown_space_error_lists_the_spaces():
    """The ", " separator of the noise-space list in GuardConfig's error -> "XX, XX"."""
    with pytest.raises(ConfigError, match="choose one of normalized, pixel, waveform"):
        GuardConfig(noise_space="pixels")


def test_config_stores_sigma_as_a_float():
    """``object.__setattr__(self, "sigma", validate_sigma(...))`` -> attribute "XXsigmaXX" / "SIGMA": the
    validated float must replace the given int."""
    sigma = GuardConfig(sigma=1, noise_space="pixel").sigma
    assert type(sigma) is float and sigma == 1.0


@pytest.mark.parametrize(
    ("settings", "word"),
    [
        ({"num_copies": -1}, "num_copies"),
        ({"seed": -1}, "seed"),
        ({"num_clusters": 0}, "num_clusters"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_config_errors_name_the_setting(settings, word):
    """``check_int("num_copies" | "seed" | "num_clusters" | "batch_size", ...)`` name -> None / "XX...XX" /
    upper case in GuardConfig.__post_init__."""
    with pytest.raises(ConfigError) as caught:
        GuardConfig(**settings)
    assert names_word(str(caught.value), word)


def test_one_cluster_and_batches_of_one_are_valid():
    """``check_int("num_clusters", ..., minimum=1)`` / ``check_int("batch_size", ..., minimum=1)`` ->
    ``minimum=2``: k = 1 (a plain majority of one cluster) and one candidate per call are allowed."""
    config = GuardConfig(num_clusters=1, batch_size=1)
    assert (config.num_clusters, config.batch_size) == (1, 1)


def test_unknown_settings_error_lists_them_and_the_known_ones():
    """The two ", " separators of GuardConfig.of's error (unknown names, known names) -> "XX, XX"."""
    with pytest.raises(ConfigError) as caught:
        GuardConfig.of(zeta=1, alpha=2)
    message = str(caught.value)
    assert "setting(s) alpha, zeta;" in message and "known: sigma, num_copies, noise_space, seed," in message


def test_purifier_needs_pixel_space():
    with pytest.raises(ConfigError, match="use noise space pixel, not normalized"):
        GuardConfig(purifier="testbed-denoiser", noise_space="normalized")
    with pytest.raises(ConfigError, match="not waveform"):
        GuardConfig(purifier="testbed-denoiser", noise_space="waveform")
    resolved = GuardConfig(purifier="testbed-denoiser").resolve("normalized")
    assert resolved.noise_space == "pixel" and resolved.sigma == 0.027  # the purifier's space and its default
