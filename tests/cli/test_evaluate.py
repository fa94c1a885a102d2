"""Tests of ``smoothguard.cli.evaluate``."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from smoothguard import ConfigError
from smoothguard.cli import EXIT_USER_ERROR, main
from smoothguard.eval import (
    DataError,
    GuardSpec,
    benchmark_names,
    evaluate,
)
from smoothguard.eval import base as eval_base
from support.common import SHARED, needs_reference
from support.eval import (
    Shapes,
    make_pope_folder,
    no_model,
    records_of,
    write_jsonl,
)

LLAVA_BENCH = SHARED / "fixtures" / "llava_bench"


needs_llava_bench = needs_reference(LLAVA_BENCH, "the LLaVA-Bench review files of ../shared")


POPE = SHARED / "fixtures" / "pope"


needs_pope = needs_reference(POPE, "the POPE answer/label files of ../shared")


@needs_llava_bench
def test_score_llava_bench_cli(capsys):
    path = str(LLAVA_BENCH / "reviews" / "llava-reviews-new.jsonl")
    assert main(["score", "llava-bench", path]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["all", "93.5", "77.8", "72.8", "60", "1"] in lines
    assert main(["score", "llava-bench", path, "--exclude-unparseable", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["all"]["n"] == 59


@needs_pope
def test_score_pope_cli_text_and_json(capsys):
    base = [
        "score",
        "pope",
        str(POPE / "answers" / "llava-1.5-7b-hf-baseline.jsonl"),
        "--questions",
        str(POPE / "llava_pope_test.jsonl"),
        "--labels",
        str(POPE / "coco"),
    ]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "adversarial" in out and "84.03" in out and "82.90" in out and "1161" in out
    assert main([*base, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["random"]["tp"] == 1161 and scores["mean"]["n"] == 8910


def test_score_pope_cli_error_is_one_line(capsys, tmp_path):
    folder = make_pope_folder(tmp_path, per_split=2)
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": 1, "text": "Yes"}])
    argv = ["score", "pope", str(answers), "--questions", str(folder / "llava_pope_test.jsonl")]
    code = main([*argv, "--labels", str(folder / "coco")])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and err.startswith("smoothguard: error:") and "lacks 5 of 6" in err
    assert len(err.strip().splitlines()) == 1


def test_a_run_killed_mid_way_resumes_with_every_item_once(tmp_path, tiny_llava_dir):
    data = make_pope_folder(tmp_path / "pope", per_split=10)
    run = tmp_path / "run"
    argv = ["eval", "pope", "--model", str(tiny_llava_dir), "--data", str(data), "--out", str(run), "--no-defense"]
    argv += ["--max-new-tokens", "8"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "smoothguard", *argv, "--questions-per-batch", "1"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    records = run / "records.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if records.is_file() and records.read_bytes().count(b"\n") >= 3:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert 3 <= records.read_bytes().count(b"\n") < 30
    assert main([*argv, "--questions-per-batch", "16"]) == 0  # the batch size may change on resume
    ids = [r["id"] for r in records_of(run)]
    assert sorted(ids, key=int) == [str(i) for i in range(1, 31)] and len(set(ids)) == 30


def test_a_registered_plugin_runs_through_the_eval_command(tmp_path, tiny_llava_dir, capsys, monkeypatch):
    monkeypatch.setitem(eval_base.BENCHMARKS.entries, "shapes", Shapes)
    assert "shapes" in benchmark_names()
    argv = ["eval", "shapes", "--model", str(tiny_llava_dir), "--option", "size=3", "--num-copies", "1"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["items"]["done"] == 3 and summary["settings"]["options"] == {"size": "3"}
    assert [r["image"] for r in records_of(tmp_path / "run")] == [None, None, None]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0  # nothing left: prints the table
    assert "| all |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--judge", "refusal"], "does not use the refusal judge"),
        (["--variant", "SD"], "does not take option(s) variant"),
        (["--shard", "2/2"], "--shard must be i/n"),
        (["--limit", "0"], "limit must be an integer >= 1"),
        (["--sigma", "-1"], "sigma must be a finite number"),
        (["--images", "/no/such/folder"], "/no/such/folder does not exist"),
    ],
)
def test_eval_user_errors_are_one_line(capsys, tmp_path, pope, tiny_llava_dir, extra, message):
    argv = ["eval", "pope", "--model", str(tiny_llava_dir), "--data", str(pope), "--out", str(tmp_path / "r"), *extra]
    assert main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("smoothguard: error:") and message in err and len(err.strip().splitlines()) == 1


def test_missing_images_and_unknown_benchmark(capsys, tmp_path, pope, tiny_llava_dir):
    (pope / "val2014" / "COCO_val2014_000000000001.jpg").unlink()
    with pytest.raises(DataError, match=r"3 of the 9 images to answer are missing"):
        evaluate("pope", GuardSpec(model=str(tiny_llava_dir)), tmp_path / "run", data=pope, model=no_model)
    assert main(["eval", "nope", "--model", str(tiny_llava_dir)]) == EXIT_USER_ERROR
    assert "unknown benchmark 'nope'; choose one of" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="needs its data folder"):
        evaluate("pope", GuardSpec(model=str(tiny_llava_dir)), tmp_path / "run2", model=no_model)


def test_sweep_command(tmp_path, tiny_llava_dir, capsys):
    pope = make_pope_folder(tmp_path / "pope", per_split=1)
    argv = ["sweep", "pope", "--model", str(tiny_llava_dir), "--data", str(pope), "--num-copies", "1"]
    argv += ["--max-new-tokens", "2", "--out", str(tmp_path / "sweep"), "--sigmas", "0.05,0.1", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["plot"].endswith("utility-vs-sigma.png") and len(result["rows"]) == 2
    assert main([*argv[:-3], "--sigma", "0.2", "--sigmas", "0.1"]) == EXIT_USER_ERROR
    assert "not --sigma" in capsys.readouterr().err
    assert main([*argv[:-1], "--no-defense"]) == EXIT_USER_ERROR
    assert "keep the defense on" in capsys.readouterr().err


def test_eval_runs_with_a_purifier_and_records_it(capsys, tmp_path):
    argv = ["eval", "testbed-pope", "--model", "testbed", "--purifier", "testbed-denoiser", "--sigma", "0.25"]
    argv += ["--num-copies", "2", "--option", "num_scenes=1", "--limit", "2", "--out", str(tmp_path), "--json"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    defense = summary["settings"]["guard"]["defense"]
    assert (defense["purifier"], defense["noise_space"], defense["sigma"]) == ("testbed-denoiser", "pixel", 0.25)
    assert summary["items"]["done"] == 2
    assert "purifier testbed-denoiser" in (tmp_path / "report.md").read_text()


def test_the_cli_reports_a_corrupt_run_in_one_line(capsys, pope_run, tiny_llava_dir):
    pope, _, run = pope_run
    (run / "records.jsonl").write_text("{oops\n")
    argv = ["eval", "pope", "--model", str(tiny_llava_dir), "--data", str(pope), "--no-defense", "--out", str(run)]
    assert main([*argv, "--max-new-tokens", "2"]) == EXIT_USER_ERROR
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress lines
    assert last.startswith("smoothguard: error:") and "line 1 is corrupt" in last
