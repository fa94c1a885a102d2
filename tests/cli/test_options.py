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


def test_defense_and_no_defense_come_with_the_guard_options():
    """``--defense/--no-defense`` is one option of the guard's: off means ``num_copies`` 0, on keeps the
    configured copies; the commands that can run undefended offer it, certify and attack do not."""
    import argparse

    from smoothguard.cli.main import build_parser
    from smoothguard.cli.options import add_guard_options, guard_config

    parser = argparse.ArgumentParser()
    add_guard_options(parser, defense=True)
    assert guard_config(parser.parse_args(["--num-copies", "4"])).num_copies == 4
    assert guard_config(parser.parse_args(["--num-copies", "4", "--defense"])).num_copies == 4
    assert guard_config(parser.parse_args(["--num-copies", "4", "--no-defense"])).num_copies == 0
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("generate", "eval", "sweep", "serve"):
        assert "--no-defense" in commands[name].format_help(), name
    for name in ("certify", "attack", "demo"):
        assert "--no-defense" not in commands[name].format_help(), name


def test_every_sigma_list_is_sigmas():
    from smoothguard.cli.main import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("sweep", "certify"):
        assert "--sigmas SIGMAS" in commands[name].format_help(), name
    args = build_parser().parse_args(["certify", "--model", "m", "--benchmark", "testbed", "--sigma", "0.1,0.2"])
    assert args.sigmas == "0.1,0.2"  # the old spelling stays, as an alias
