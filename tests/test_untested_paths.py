"""Areas that had no test (issue 13, item 6): the testbed's data / train / evaluate commands on a
seconds-long budget, the demo's text table against a made-up summary, and the eval runner's
corrupt-record and duplicate-id errors."""

import json

import pytest

from eval_support import make_pope_folder
from smoothguard.cli import EXIT_USER_ERROR, main
from smoothguard.config import GuardConfig
from smoothguard.eval import DataError, GuardSpec, evaluate
from smoothguard.eval.store import read_records
from smoothguard.stats import rate_with_interval
from smoothguard.testbed.demo import column_title, format_table


def test_testbed_data_writes_scenes_and_their_questions(capsys, tmp_path):
    assert main(["testbed", "data", "--count", "3", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        f"{seed}.png" for seed in sorted(int(p.stem) for p in tmp_path.glob("*.png"))
    ]
    assert len(list(tmp_path.glob("*.png"))) == 3
    rows = [json.loads(line) for line in (tmp_path / "questions.jsonl").read_text().splitlines()]
    assert rows and {row["image"] for row in rows} == {p.name for p in tmp_path.glob("*.png")}
    assert {"task", "kind", "question", "answer", "badge"} <= set(rows[0])


def test_testbed_evaluate_reports_every_metric_with_its_count(capsys):
    """Two scenes hold no probe of some kinds: those metrics are absent, not a KeyError (a bug this found)."""
    assert main(["testbed", "evaluate", "--scenes", "2", "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report and all(0.0 <= figures["accuracy"] <= 1.0 and figures["n"] >= 1 for figures in report.values())
    assert main(["testbed", "evaluate", "--scenes", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(report) and all(f"n={report[line.split()[0]]['n']}" in line for line in lines)


def test_testbed_train_runs_a_few_steps_and_resumes(capsys, tmp_path):
    argv = ["testbed", "train", "--out", str(tmp_path), "--steps", "2", "--batch-size", "2", "--threads", "1"]
    assert main(argv) == 0
    assert (tmp_path / "model" / "config.json").is_file()
    assert main(argv) == 0  # resumes: nothing left to train
    assert "model in" in capsys.readouterr().out


def test_demo_table_prints_the_summarys_numbers():
    from smoothguard.testbed.ladder import JUDGES, THREATS

    columns = {
        "undefended": {"sigma": 0.1, "noise_space": "normalized", "num_copies": 0, "seed": 0},
        "paper": {"sigma": 0.1, "noise_space": "normalized", "num_copies": 6, "seed": 0},
        "best": {"sigma": 0.25, "noise_space": "normalized", "num_copies": 6, "seed": 0},
    }
    rows = [(t.name, judge) for t in THREATS for judge in JUDGES] + [("worst-case", j) for j in JUDGES]
    rows += [("utility-pope", "correct"), ("utility-describe", "named")]
    cells = []
    for number, (row, judge) in enumerate(rows):
        for offset, column in enumerate(columns):
            cell = {"row": row, "column": column, "judge": judge, **rate_with_interval(number + offset, 256)}
            if column != "undefended":
                cell["mcnemar_p"] = 0.5 / (offset + 1)
            cells.append(cell)
    summary = {"cells": cells, "settings": {"columns": columns, "eot_samples": 8}, "seconds": 12.4}
    lines = format_table(summary).splitlines()
    assert lines[0].split()[-3:] == ["sigma", "0.25", "normalized"] and "sigma 0.1 normalized" in lines[0]
    # clean images, complied: 0/256, 1/256, 2/256 (Clopper-Pearson upper bounds 0.0143, 0.0216, 0.0279, by hand)
    assert lines[1].startswith("clean images (no attack)")
    assert "0.000 [0.00, 0.01] (0/256)" in lines[1] and "0.004 [0.00, 0.02] (1/256) p=0.25" in lines[1]
    assert lines[1].endswith("0.008 [0.00, 0.03] (2/256) p=0.17")
    worst = next(line for line in lines if line.startswith("worst case over the attacks"))
    assert "(12/256)" in worst  # rows are numbered per (row, judge): the worst case's complied row is number 12
    pope = next(line for line in lines if line.startswith("testbed-pope accuracy"))
    assert pope.endswith("(16/256) p=0.17") and lines[-1].endswith("12 s)")  # row 14, best column: 14 + 2
    assert "4 noisy copies" not in lines[-1] and "6 noisy copies + the clean one" in lines[-1]
    assert "8 samples per step" in lines[-1]
    denoised = {"sigma": 0.25, "noise_space": "pixel", "purifier": "testbed-denoiser"}
    assert column_title("denoised", denoised) == "sigma 0.25 pixel + testbed-denoiser"
    assert column_title("undefended", columns["undefended"]) == "undefended"


@pytest.fixture
def pope_run(tmp_path, tiny_llava, tiny_llava_dir):
    pope = make_pope_folder(tmp_path / "pope", per_split=1)
    spec = GuardSpec(model=str(tiny_llava_dir), guard=GuardConfig(num_copies=0))
    run = tmp_path / "run"
    evaluate("pope", spec, run, data=pope, model=tiny_llava, max_new_tokens=2)
    return pope, spec, run


def test_a_corrupt_record_is_named_with_its_line(pope_run, tiny_llava):
    pope, spec, run = pope_run
    records = run / "records.jsonl"
    lines = records.read_text().splitlines()
    records.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"records.jsonl, line 2 is corrupt"):
        read_records(run)
    with pytest.raises(DataError, match="delete that line to resume"):
        evaluate("pope", spec, run, data=pope, model=tiny_llava, max_new_tokens=2)


def test_two_records_of_one_item_are_refused(pope_run):
    run = pope_run[2]
    first = (run / "records.jsonl").read_text().splitlines()[0]
    (run / "records.shard-0-of-2.jsonl").write_text(first + "\n")
    with pytest.raises(DataError, match="has two records; were two runs writing one shard"):
        read_records(run)


def test_the_cli_reports_a_corrupt_run_in_one_line(capsys, pope_run, tiny_llava_dir):
    pope, _, run = pope_run
    (run / "records.jsonl").write_text("{oops\n")
    argv = ["eval", "pope", "--model", str(tiny_llava_dir), "--data", str(pope), "--no-defense", "--out", str(run)]
    assert main([*argv, "--max-new-tokens", "2"]) == EXIT_USER_ERROR
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress lines
    assert last.startswith("smoothguard: error:") and "line 1 is corrupt" in last
