"""Tests of ``smoothguard.attacks.objectives``."""

import pytest

from smoothguard import ConfigError
from smoothguard.attacks import EOT, AwayObjective, TargetObjective
from smoothguard.noise import GaussianNoise
from support.attacks import attack_of, ce, greedy_answer, medium_of

PROMPT = "What is in the image?"


def test_untargeted_attack_raises_the_reference_loss(model):
    x = medium_of(model)
    reference = greedy_answer(model, x)
    result = attack_of(model, steps=4)(model, x, PROMPT, AwayObjective(reference), max_new_tokens=4)
    before, after = ce(model, x, [reference]).item(), ce(model, result.adversarial, [reference]).item()
    assert after > before
    assert result.start_loss == pytest.approx(-before, abs=1e-5)
    assert result.end_loss == pytest.approx(-after, abs=1e-5)
    assert result.target_generated is None
    assert result.config["objective"] == {"kind": "untargeted", "reference": reference}


@pytest.mark.parametrize(
    "make",
    [
        lambda: TargetObjective.of([]),
        lambda: TargetObjective.of(""),
        lambda: TargetObjective.of(["fine", "  "]),
        lambda: TargetObjective.of(["fine", None]),
        lambda: TargetObjective.of(["a", "b"], targets_per_step=0),
        lambda: TargetObjective.of(["a", "b"], targets_per_step=1.5),
        lambda: AwayObjective(""),
        lambda: AwayObjective("   "),
        lambda: EOT(GaussianNoise(0.1, "pixel"), samples=0),
        lambda: EOT(GaussianNoise(0.1, "pixel"), samples=True),
        lambda: EOT(GaussianNoise(0.1, "pixel"), samples=2.0),
    ],
    ids=[
        "no-targets",
        "empty-target",
        "blank-target",
        "non-string-target",
        "zero-per-step",
        "fractional-per-step",
        "empty-reference",
        "blank-reference",
        "eot-zero-samples",
        "eot-bool-samples",
        "eot-float-samples",
    ],
)
def test_bad_objectives_and_eot(make):
    with pytest.raises(ConfigError):
        make()
