"""Tests of ``smoothguard.testbed.ladder``."""

import json

import torch

from smoothguard.testbed.data import (
    HELD_OUT_START,
)
from smoothguard.testbed.tasks import (
    HELD_OUT_REQUESTS,
)


def test_demo_uses_the_shipped_attacks_for_the_default_settings(testbed, tmp_path):
    from smoothguard.inputs import load_image
    from smoothguard.testbed.demo import SHIPPED_ATTACKS, _adversarial
    from smoothguard.testbed.ladder import DemoConfig, Threat

    folder = tmp_path / "attacks" / "white-box-32"
    lines: list[str] = []
    image, record = _adversarial(
        testbed, Threat("white-box", 32), 3, DemoConfig(), None, folder, progress=False, log=lines.append
    )
    assert torch.equal(image, load_image(SHIPPED_ATTACKS / "white-box-32" / "3.png"))
    assert record == json.loads((SHIPPED_ATTACKS / "white-box-32" / "3.png.json").read_text())
    assert lines == []  # nothing optimised, and the image it used is in its folder, byte for byte with its sidecar
    assert sorted(p.name for p in folder.iterdir()) == ["3.png", "3.png.json"]
    for name in ("3.png", "3.png.json"):
        assert (folder / name).read_bytes() == (SHIPPED_ATTACKS / "white-box-32" / name).read_bytes()
    sidecar = json.loads((folder / "3.png.json").read_text())
    assert sidecar["config"]["demo_key"]["base_scene"] > HELD_OUT_START and sidecar["linf"] <= 32 + 1e-6
    assert sidecar["config"]["demo_key"]["targets"] == "in context"  # made after issue 21's fix
    assert sidecar["best_loss"] == min(sidecar["losses"]) and len(sidecar["losses"]) == DemoConfig().attack_steps


def test_the_shipped_per_request_images_match_the_default_settings(testbed, tmp_path):
    """Every held-out request has its shipped per-request image (white-box, undefended column), found in the
    cache by the default settings, its loss curve in its sidecar."""
    from smoothguard.testbed.demo import SHIPPED_ATTACKS, _adversarial
    from smoothguard.testbed.ladder import DemoConfig, Threat

    config, lines = DemoConfig(), []
    for index in (0, config.per_request_images - 1):
        folder = tmp_path / "attacks" / "per-request-16"
        _, record = _adversarial(testbed, Threat("per-request", 16), index, config, None, folder, False, lines.append)
        assert record["config"]["prompts"] == [HELD_OUT_REQUESTS[index]]
        assert len(record["losses"]) == config.per_request_steps
    assert lines == []  # nothing optimised
    assert len(list((SHIPPED_ATTACKS / "per-request-16").glob("*.png"))) == len(HELD_OUT_REQUESTS)


def test_the_shipped_adaptive_images_through_the_denoiser_match_the_default_settings(testbed, tmp_path):
    """The denoised column's adaptive images are keyed by the purifier's name and weights' hash, not by the
    folder it loaded from (a clean clone or an installed package must find them)."""
    from smoothguard.attacks import EOT
    from smoothguard.guard import SmoothGuard
    from smoothguard.testbed.demo import SHIPPED_ATTACKS, _adversarial, _image_folder
    from smoothguard.testbed.ladder import DemoConfig, Threat

    config = DemoConfig()
    eot = EOT.from_guard(SmoothGuard(testbed, config.columns()["denoised"]), config.eot_samples)
    folder = _image_folder(Threat("adaptive", 32), eot)
    assert folder == f"attacks/adaptive-32-sigma{config.denoiser_sigma:g}-pixel-testbed-denoiser"
    lines: list[str] = []
    _adversarial(testbed, Threat("adaptive", 32), 0, config, eot, tmp_path / folder, False, lines.append)
    assert lines == []  # found in the shipped cache: nothing optimised
    sidecar = json.loads((SHIPPED_ATTACKS / folder.split("/")[1] / "0.png.json").read_text())
    purifier = sidecar["config"]["demo_key"]["eot"]["purifier"]
    assert purifier == {"name": "testbed-denoiser", "sha256": eot.purifier.sha256}
