"""Tests of ``smoothguard.attacks.audio``."""

import torch

from smoothguard.attacks import WaveformPGD


def test_waveform_finalize_keeps_the_samples_as_they_are():
    """WaveformPGD.finalize: audio is not put on a grid (the image rounding would destroy it)."""
    x = torch.tensor([0.123456, -0.987654])
    assert torch.equal(WaveformPGD(progress=False).finalize(x, torch.zeros(2)), x)
