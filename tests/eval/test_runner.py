"""The evaluation runner on a tiny random LLaVA: records, summary and report; resume (also after
``kill -9``), refusal of other settings, shards, a plug-in benchmark, and the ``eval`` command."""

import json

import pytest
import torch

from smoothguard import GuardConfig
from smoothguard.eval import (
    GuardSpec,
    RefusalJudge,
    RunConflictError,
    evaluate,
    parse_yes_no,
    score_pope_answers,
)
from smoothguard.records import read_records
from support.eval import make_mm_safety_folder, no_model, records_of, save_image


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


def test_eval_records_the_resolved_noise_space(tmp_path, tiny_llava, tiny_llava_dir):
    from support.eval import make_pope_folder

    pope = make_pope_folder(tmp_path / "pope", per_split=1)
    spec = GuardSpec(model=str(tiny_llava_dir), guard=GuardConfig(num_copies=1))
    summary = evaluate("pope", spec, tmp_path / "run", data=pope, model=tiny_llava, max_new_tokens=2, limit=1)
    defense = summary["settings"]["guard"]["defense"]
    assert defense["noise_space"] == "normalized" and defense["sigma"] == 0.1
    expected = GuardConfig(num_copies=1).resolve("normalized").to_dict()
    assert defense == {k: v for k, v in expected.items() if k != "batch_size"}
