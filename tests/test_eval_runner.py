"""The evaluation runner on a tiny random LLaVA: records, summary and report; resume (also after
``kill -9``), refusal of other settings, shards, a plug-in benchmark, and the ``eval`` command."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from eval_support import make_mm_safety_folder, make_pope_folder, save_image
from smoothguard import registry
from smoothguard.cli import EXIT_USER_ERROR, main
from smoothguard.config import GuardConfig
from smoothguard.errors import ConfigError
from smoothguard.eval import (
    Benchmark,
    DataError,
    EvalItem,
    GuardSpec,
    RefusalJudge,
    RunConflictError,
    benchmark_names,
    evaluate,
    get_benchmark,
    parse_yes_no,
    pope_metrics,
    register_benchmark,
    score_pope_answers,
)
from smoothguard.eval import base as eval_base
from smoothguard.records import read_records


def records_of(run):
    rows = []
    for path in sorted(run.glob("records*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


def no_model():
    raise AssertionError("the model was loaded although every item had a record")


@pytest.fixture
def pope(tmp_path):
    return make_pope_folder(tmp_path / "pope", per_split=3)


def test_defended_run_writes_records_summary_and_report(tmp_path, pope, tiny_llava, tiny_llava_dir):
    spec = GuardSpec(model=str(tiny_llava_dir), guard=GuardConfig(sigma=0.2, num_copies=2, seed=3))
    run = tmp_path / "run"
    summary = evaluate("pope", spec, run, data=pope, model=tiny_llava, questions_per_batch=4, max_new_tokens=3)
    records = records_of(run)
    assert [r["id"] for r in records] == [str(i) for i in range(1, 10)]
    first = records[0]
    assert first["question_id"] == 1 and first["prompt"].startswith("Is there a")
    assert first["meta"] == {
        "question_id": 1,
        "split": "adversarial",
        "label": "no",
        "image": "COCO_val2014_000000000000.jpg",
    }
    assert len(first["defense"]["candidates"]) == 3 and first["text"] in first["defense"]["candidates"]
    assert first["prediction"] == ("yes" if parse_yes_no(first["text"]) else "no")
    assert [r["timings"]["batch_queries"] for r in records] == [4] * 8 + [1]
    assert summary["complete"] and summary["items"] == {"done": 9, "selected": 9, "total": 9}
    assert summary["seed"] == 3 and summary["judge"] is None and summary["versions"]["torch"] == torch.__version__
    assert summary["settings"]["guard"]["defense"]["sigma"] == 0.2 and summary["model"]["family"] == "llava"
    assert summary["headline"]["mean.f1"] == summary["scores"]["mean"]["f1"]
    # the records are a LLaVA answer file: the standalone scorer agrees with the run's summary
    assert score_pope_answers(run / "records.jsonl", pope / "llava_pope_test.jsonl", pope / "coco") == summary["scores"]
    # ... and both agree with the metrics counted here by hand from the records' predictions and labels
    for split in ("adversarial", "popular", "random"):
        mine = [r for r in records if r["meta"]["split"] == split]
        pairs = [(r["prediction"] == "yes", r["meta"]["label"] == "yes") for r in mine]
        tp = sum(p and t for p, t in pairs)
        fp = sum(p and not t for p, t in pairs)
        fn = sum(not p and t for p, t in pairs)
        got = summary["scores"][split]
        assert (got["tp"], got["fp"], got["fn"], got["n"]) == (tp, fp, fn, len(pairs))
        assert got["accuracy"] == pytest.approx((len(pairs) - fp - fn) / len(pairs))
        assert got["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
        assert got["recall"] == pytest.approx(tp / (tp + fn) if tp + fn else 0.0)
        assert got["yes_ratio"] == pytest.approx((tp + fp) / len(pairs))
    assert json.loads((run / "summary.json").read_text())["scores"] == summary["scores"]
    report = (run / "report.md").read_text()
    assert "sigma 0.2" in report and "| adversarial |" in report and "9 of 9 answered (complete)" in report


def test_rerun_resumes_and_refuses_other_settings(tmp_path, pope, tiny_llava, tiny_llava_dir):
    spec = GuardSpec(model=str(tiny_llava_dir), guard=GuardConfig(num_copies=0))
    run = tmp_path / "run"
    partial = evaluate("pope", spec, run, data=pope, model=tiny_llava, limit=4, max_new_tokens=2)
    assert partial["complete"] and partial["items"] == {"done": 4, "selected": 4, "total": 9}
    assert len(records_of(run)) == 4
    # undefended: the noise settings do not shape the answers, so a changed sigma still resumes
    summary = evaluate(
        "pope",
        GuardSpec(model=str(tiny_llava_dir), guard=GuardConfig(num_copies=0, sigma=0.3)),
        run,
        data=pope,
        model=tiny_llava,
        max_new_tokens=2,
    )
    assert summary["complete"] and sorted(int(r["id"]) for r in records_of(run)) == list(range(1, 10))
    again = evaluate("pope", spec, run, data=pope, model=no_model, max_new_tokens=2)
    assert again["scores"] == summary["scores"] and len(records_of(run)) == 9
    with pytest.raises(RunConflictError, match=r"guard\.defense: None then, .*sigma.* now"):
        evaluate("pope", GuardSpec(model=str(tiny_llava_dir)), run, data=pope, model=no_model, max_new_tokens=2)
    with pytest.raises(RunConflictError, match="max_new_tokens: 2 then, 5 now"):
        evaluate("pope", spec, run, data=pope, model=no_model, max_new_tokens=5)
    with pytest.raises(RunConflictError, match=r"options\.splits"):
        evaluate("pope", spec, run, data=pope, options={"splits": "random"}, model=no_model, max_new_tokens=2)
    assert len(records_of(run)) == 9


def test_torn_last_line_is_redone(tmp_path, pope, tiny_llava, tiny_llava_dir):
    spec = GuardSpec(model=str(tiny_llava_dir), guard=GuardConfig(num_copies=0))
    run = tmp_path / "run"
    evaluate("pope", spec, run, data=pope, model=tiny_llava, limit=3, max_new_tokens=2)
    with (run / "records.jsonl").open("a") as handle:
        handle.write('{"id": "4", "prompt": "Is th')  # what kill -9 in the middle of a write leaves
    assert len(read_records(run)) == 3
    evaluate("pope", spec, run, data=pope, model=tiny_llava, max_new_tokens=2)
    assert sorted(int(r["id"]) for r in records_of(run)) == list(range(1, 10))


def test_shards_share_a_run_folder(tmp_path, pope, tiny_llava, tiny_llava_dir):
    spec = GuardSpec(model=str(tiny_llava_dir), guard=GuardConfig(num_copies=0))
    run = tmp_path / "run"
    first = evaluate("pope", spec, run, data=pope, model=tiny_llava, shard=(0, 2), max_new_tokens=2)
    assert not first["complete"] and first["items"]["done"] == 5
    second = evaluate("pope", spec, run, data=pope, model=tiny_llava, shard=(1, 2), max_new_tokens=2)
    assert second["complete"] and sorted(p.name for p in run.glob("records*")) == [
        "records.shard-0-of-2.jsonl",
        "records.shard-1-of-2.jsonl",
    ]
    assert sorted(int(r["id"]) for r in records_of(run)) == list(range(1, 10))


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


class Shapes(Benchmark):
    """A plug-in benchmark with in-memory images (a tensor and a PIL image) and no data folder."""

    name = "shapes"
    max_new_tokens = 2
    headline = ("all.accuracy",)
    needs_data = False

    def load_items(self, data_dir, *, size="2"):
        images = [torch.rand(3, 20, 24), Image.new("RGB", (24, 20), "red")]
        return [EvalItem(f"s{i}", "Is there a square?", images[i % 2], {"label": "yes"}) for i in range(int(size))]

    def score(self, records):
        return {"all": pope_metrics([parse_yes_no(r["text"]) for r in records], [True] * len(records))}


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


def test_entry_point_and_lazy_registrations(monkeypatch):
    class EntryPoint:
        name = "from-a-package"

        def load(self):
            return Shapes

    installed = registry.entry_points  # the real ones register the testbed's benchmarks
    monkeypatch.setattr(registry, "entry_points", lambda group: [*installed(group=group), EntryPoint()])
    assert {"from-a-package", "pope", "mm-safety", "llava-bench", "testbed-pope", "testbed-safety"} <= set(
        benchmark_names()
    )
    assert get_benchmark("testbed-safety").name == "testbed-safety"
    assert isinstance(get_benchmark("from-a-package"), Shapes)
    register_benchmark("lazy-shapes", "test_eval_runner:Shapes")
    try:
        assert isinstance(get_benchmark("lazy-shapes"), Shapes)
    finally:
        eval_base.BENCHMARKS.entries.pop("lazy-shapes")
    register_benchmark("broken", "no.such.module:Thing")
    try:
        with pytest.raises(ConfigError, match="cannot be imported"):
            get_benchmark("broken")
    finally:
        eval_base.BENCHMARKS.entries.pop("broken")


def test_mm_safety_run_with_default_judge_and_universal_image(tmp_path, tiny_llava, tiny_llava_dir):
    data = make_mm_safety_folder(tmp_path / "mm", per_scenario=2)
    universal = save_image(tmp_path / "universal.png", 5)
    spec = GuardSpec(model=str(tiny_llava_dir), guard=GuardConfig(num_copies=1))
    options = {"universal_image": universal, "scenarios": "01"}
    summary = evaluate(
        "mm-safety", spec, tmp_path / "run", data=data, options=options, model=tiny_llava, max_new_tokens=3
    )
    assert summary["judge"] == RefusalJudge().identity()
    assert summary["settings"]["options"]["universal_image"] == str(universal.resolve())
    records = records_of(tmp_path / "run")
    assert {r["image"] for r in records} == {str(universal)} and {r["verdict"] for r in records} <= {"safe", "unsafe"}
    assert summary["scores"]["all"]["n"] == 2 and summary["headline"] == {"all.asr": summary["scores"]["all"]["asr"]}


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
