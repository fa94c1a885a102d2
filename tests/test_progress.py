"""Long work says it is working: a bar on a terminal, periodic plain lines on stderr elsewhere (batch jobs,
CI, ``nohup``); and the command says what it is (``smoothguard --version``)."""

import importlib.metadata
import io
import subprocess
import sys
import textwrap

import pytest
import torch

import smoothguard
from smoothguard.attacks import PGD, TargetObjective
from smoothguard.cli import main
from smoothguard.config import GuardConfig
from smoothguard.eval import GuardSpec, evaluate
from smoothguard.progress import INTERVAL_ENV, Progress, default_interval, format_duration, track
from support.eval import make_pope_folder


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_it_prints_a_start_line_then_at_most_one_a_interval_then_a_final_line():
    stream, clock = io.StringIO(), Clock()
    with Progress(8910, "eval pope", "item", interval=30, stream=stream, clock=clock) as bar:
        for _ in range(4):  # 4 items in 40 s: one line after 30 s, none before
            clock.now += 10
            bar.update(1)
        clock.now += 10
        bar.update(116)  # 120 items after 50 s: less than 30 s since the last line
        clock.now += 30
        bar.update(0)
    lines = stream.getvalue().splitlines()
    assert lines == [
        "[eval pope] 0/8910 items",
        "[eval pope] 3/8910 items, 0.10 items/s, eta 24 h 44 min",
        "[eval pope] 120/8910 items, 1.5 items/s, eta 1 h 38 min",
        "[eval pope] stopped at 120/8910 items after 1 min 20 s, 1.5 items/s",
    ]


def test_the_final_line_says_done_and_a_resumed_run_counts_its_own_rate():
    stream, clock = io.StringIO(), Clock()
    bar = Progress(10, "train", "step", initial=4, interval=0, stream=stream, clock=clock)
    bar.set_postfix(loss="0.1234")
    for _ in range(6):
        clock.now += 2
        bar.update(1)
    bar.close()
    bar.close()  # idempotent
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[train] 4/10 steps"
    assert lines[1] == "[train] 5/10 steps, 0.50 steps/s, eta 10 s, loss 0.1234"
    assert lines[-1] == "[train] done: 10/10 steps in 12 s, 0.50 steps/s, loss 0.1234"
    assert len(lines) == 7  # start, one per step but the last, final


def test_iterating_counts_each_element_and_closes_at_the_end():
    stream = io.StringIO()
    seen = list(Progress(iterable=["a", "b", "c"], desc="certify sigma 0.25", interval=3600, stream=stream))
    assert seen == ["a", "b", "c"]
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[certify sigma 0.25] 0/3 items"
    assert lines[-1].startswith("[certify sigma 0.25] done: 3/3 items in ") and len(lines) == 2


def test_track_goes_to_stderr(capsys):
    assert list(track(range(2), "loop", interval=3600)) == [0, 1]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.splitlines()[0] == "[loop] 0/2 items"


def test_unknown_totals_slow_rates_and_durations():
    stream, clock = io.StringIO(), Clock()
    bar = Progress(None, "evaluate", "batch", interval=0, stream=stream, clock=clock)
    clock.now += 50
    bar.update(2)
    bar.close()
    assert stream.getvalue().splitlines() == [
        "[evaluate] 0 batches",
        "[evaluate] 2 batches, 25 s/batch",
        "[evaluate] done: 2 batches in 50 s, 25 s/batch",
    ]
    durations = [format_duration(s) for s in (0.4, 59, 61, 599, 3599, 7500)]
    assert durations == ["0 s", "59 s", "1 min 01 s", "9 min 59 s", "60 min", "2 h 05 min"]


def test_disabled_shows_nothing_and_a_terminal_gets_a_bar_instead_of_lines():
    quiet = io.StringIO()
    with Progress(5, "attack", enabled=False, stream=quiet) as bar:
        bar.update(5)
    assert quiet.getvalue() == ""
    terminal = Terminal()
    with Progress(5, "attack", "step", interval=0, stream=terminal) as bar:
        bar.update(5)
    drawn = terminal.getvalue()
    assert "attack" in drawn and "5/5" in drawn and "[attack]" not in drawn  # tqdm's bar, not our lines


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert default_interval() == 30.0
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert default_interval() == 2.5 and Progress(1, enabled=False).interval == 2.5
    for bad in ("soon", "-1"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        assert default_interval() == 30.0


def test_a_real_pipe_gets_plain_lines_on_stderr():
    script = textwrap.dedent(
        """
        from smoothguard.progress import track
        for _ in track(range(3), "loop", "item", interval=0):
            pass
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    lines = done.stderr.splitlines()
    assert done.stdout == "" and "\r" not in done.stderr
    assert len(lines) == 4 and lines[0] == "[loop] 0/3 items"
    assert lines[1].startswith("[loop] 1/3 items, ") and lines[2].startswith("[loop] 2/3 items, ")
    assert lines[3].startswith("[loop] done: 3/3 items in ")


def test_the_eval_runner_reports_progress_when_stderr_is_not_a_terminal(tmp_path, tiny_llava, tiny_llava_dir, capsys):
    pope = make_pope_folder(tmp_path / "pope", per_split=2)
    spec = GuardSpec(model=str(tiny_llava_dir), guard=GuardConfig(num_copies=1))
    evaluate("pope", spec, tmp_path / "run", data=pope, model=tiny_llava, max_new_tokens=2)  # progress: default
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[eval pope] 0/6 items"
    assert lines[-1].startswith("[eval pope] done: 6/6 items in ")


def test_the_attack_reports_its_steps_and_loss_when_stderr_is_not_a_terminal(tiny_llava, capsys):
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    attack = PGD(eps=8, alpha=1, steps=2, early_stop=False)  # progress: default
    attack(tiny_llava, x, "What?", TargetObjective.of("Sure."), max_new_tokens=2)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[attack] 0/2 steps"
    assert lines[-1].startswith("[attack] done: 2/2 steps in ") and ", loss " in lines[-1]


def test_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"smoothguard {smoothguard.__version__}\n"
    assert smoothguard.__version__ == importlib.metadata.version("smoothguard")  # one version, not two
