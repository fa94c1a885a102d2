"""Tests of ``smoothguard.attacks.base``: what every attack shares (range checks, runs, checkpoints)."""

import re

import pytest
import torch

from smoothguard import InputError
from smoothguard.attacks import PGD
from smoothguard.attacks.base import Run, check_range

U = 1 / 255


def _pgd(**kwargs) -> PGD:
    return PGD(progress=False, early_stop=False, **kwargs)


def test_range_check_names_the_values_and_both_bounds():
    """check_range: NaN/inf refused; ``min() < low`` / ``max() > high`` (each strict: the bounds
    themselves are allowed); the message's figures."""
    assert torch.equal(check_range(torch.tensor([0.0, 1.0]), (0.0, 1.0), "image pixels"), torch.tensor([0.0, 1.0]))
    with pytest.raises(InputError, match=re.escape("image pixels must lie in [0, 1]; got [-0.5, 1]")):
        check_range(torch.tensor([-0.5, 1.0]), (0.0, 1.0), "image pixels")
    with pytest.raises(InputError, match=re.escape("waveform samples must lie in [-1, 1]; got [0, 1.5]")):
        check_range(torch.tensor([0.0, 1.5]), (-1.0, 1.0), "waveform samples")
    with pytest.raises(InputError, match=re.escape("image pixels contain NaN or infinite values")):
        check_range(torch.tensor([0.5, float("nan")]), (0.0, 1.0), "image pixels")


def test_start_resumes_from_an_existing_checkpoint(tmp_path):
    """_start: with a checkpoint file there, ``_load_checkpoint(checkpoint, x0, run_config, restart)`` (any
    argument -> None or dropped): the saved iterate, the kept best one and the losses come back."""
    attack = _pgd(eps=8)
    x0 = torch.full((3, 2, 2), 0.5)
    saved, best = x0 + 4 * U, x0 - 2 * U
    run_config = {**attack.config(), "prompts": ["p"]}
    done = Run(best, [2.5, 1.5], best_loss=1.5, best_step=1)
    attack._save_checkpoint(tmp_path / "run.safetensors", saved, x0, done, run_config, 0)
    run = attack._begin(x0, run_config, tmp_path / "run.safetensors", 0, 0)
    assert torch.equal(run.resume_from, saved) and torch.equal(run.x, best)
    assert run.losses == [2.5, 1.5] and run.best_step == 1 and run.best_loss == 1.5 and not run.reached
