"""Tests of ``smoothguard.cli.options``."""

import pytest

from smoothguard import GuardConfig
from smoothguard.cli.main import build_parser
from smoothguard.cli.options import guard_config

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
