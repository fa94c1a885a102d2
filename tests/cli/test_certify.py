"""Tests of ``smoothguard.cli.certify``."""

import json

import pytest

from smoothguard.cli import EXIT_USER_ERROR, main
from support.certify import made_record
from support.eval import make_pope_folder


def certify_args(model, data, out, *extra: str) -> list[str]:
    return [
        "certify",
        *("--model", str(model), "--benchmark", "pope", "--data", str(data), "--out", str(out)),
        *("--n0", "3", "--n", "12", "--limit", "3", "--max-new-tokens", "3"),
        *extra,
    ]


def test_certify_cli_writes_records_table_and_plot_and_resumes(capsys, tmp_path, tiny_llava_dir):
    data, out = make_pope_folder(tmp_path / "pope"), tmp_path / "run"
    args = certify_args(tiny_llava_dir, data, out, "--sigma", "0.01,0.5", "--radii", "0,0.01", "--json")
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [row["sigma"] for row in summary["rows"]] == [0.01, 0.5]
    assert set(summary["rows"][0]["certified_accuracy"]) == {"0", "0.01"}
    assert summary["radius_units"] == "L2 over [0, 1] pixels" and summary["complete"]
    records = [json.loads(line) for line in (out / "sigma-0.01" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        assert {"answer", "label", "correct", "radius", "abstained", "counts"} <= set(record)
        assert record["correct"] == (record["answer"] == record["label"])
    assert (out / "certified-accuracy.png").stat().st_size > 0
    assert (out / "certified-accuracy.csv").read_text().startswith("sigma,items,abstain_rate,r=0,r=0.01")

    assert main(args) == 0  # resumes: nothing left to certify, same table
    assert json.loads(capsys.readouterr().out)["rows"] == summary["rows"]
    assert len((out / "sigma-0.01" / "records.jsonl").read_text().splitlines()) == 3

    assert summary["settings"]["sigmas"] == [0.01, 0.5] and "sigma" not in summary["settings"]["guard"]
    assert summary["settings"]["guard"]["noise_space"] == "pixel" and summary["settings"]["guard"]["seed"] == 0
    assert main([*args, "--batch-size", "2"]) == 0  # the batch size does not shape the records: resumes
    assert json.loads(capsys.readouterr().out)["rows"] == summary["rows"]

    assert main(certify_args(tiny_llava_dir, data, out, "--sigma", "0.01", "--alpha", "0.01")) == EXIT_USER_ERROR
    assert "other settings" in capsys.readouterr().err


def test_certify_cli_prints_the_table_on_the_testbed(capsys, tmp_path):
    args = ["certify", "--model", "testbed", "--benchmark", "testbed", "--sigma", "0.1", "--n0", "2", "--n", "4"]
    assert main([*args, "--limit", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ["sigma", "items", "r=0", "r=0.1", "r=0.25", "r=0.5", "r=1", "abstain"]
    assert out.splitlines()[2].split()[:2] == ["0.1", "2"]


def test_certified_refusal_on_the_testbed(capsys, tmp_path):
    """testbed-safety: restricted requests on clean scenes, the refusal parser, label "refuse"."""
    args = ["certify", "--model", "testbed", "--benchmark", "testbed-safety", "--sigma", "0.05", "--n0", "3"]
    assert main([*args, "--n", "6", "--limit", "3", "--alpha", "0.05", "--out", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["settings"]["parser"] == "refusal" and summary["settings"]["benchmark"] == "testbed-safety"
    records = [json.loads(line) for line in (tmp_path / "sigma-0.05" / "records.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records] == ["refuse"] * 3
    assert all(set(r["counts"]) <= {"refuse", "comply"} and sum(r["counts"].values()) == 6 for r in records)
    # the testbed refuses every restricted request on a clean scene: 6/6 refusals certify at alpha 0.05
    assert all(r["answer"] == "refuse" and r["correct"] and r["radius"] > 0 for r in records)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--benchmark", "pope"], "data folder"),
        (["--benchmark", "testbed", "--sigma", "x"], "--sigma"),
        (["--benchmark", "testbed", "--alpha", "2"], "alpha"),
        (["--benchmark", "testbed", "--n", "0"], "--n"),
        (["--benchmark", "testbed", "--data", "somewhere"], "--benchmark pope"),
        (
            ["--benchmark", "testbed", "--universal-image", "x.png"],
            "testbed-pope does not take option(s) universal_image",
        ),
        (["--benchmark", "testbed-safety", "--purifier", "nope"], "unknown purifier"),
    ],
)
def test_certify_cli_errors_are_one_line(capsys, tmp_path, extra, message):
    assert main(["certify", "--model", "testbed", "--out", str(tmp_path), *extra]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("smoothguard: error:") and message in err and err.count("\n") == 1


def test_certify_cli_table_numbers_on_a_made_up_run(capsys, tmp_path):
    """Mutation caught: the CLI's table counting wrong answers as certified or printing the wrong column. A
    testbed run is certified, its records replaced by made-up ones (same ids), and the resumed run's
    printed table and JSON must show the hand-computed values."""
    args = ["certify", "--model", "testbed", "--benchmark", "testbed", "--sigma", "0.1", "--n0", "2", "--n", "4"]
    args += ["--limit", "5", "--out", str(tmp_path), "--radii", "0,0.05,0.3,1"]
    assert main(args) == 0
    capsys.readouterr()
    path = tmp_path / "sigma-0.1" / "records.jsonl"
    real = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(real) == 5
    pairs = zip(real, MADE_ROWS, strict=True)
    made = [{**record, **made_record(record["id"], *values[1:])} for record, values in pairs]
    path.write_text("".join(json.dumps(record) + "\n" for record in made))
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["sigma", "items", "r=0", "r=0.05", "r=0.3", "r=1", "abstain"]
    assert lines[2].split() == ["0.1", "5", "0.600", "0.400", "0.200", "0.000", "0.200"]
    assert main([*args, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert row["certified_accuracy"] == pytest.approx({"0": 0.6, "0.05": 0.4, "0.3": 0.2, "1": 0.0})
    csv_rows = (tmp_path / "certified-accuracy.csv").read_text().splitlines()
    assert [float(v) for v in csv_rows[1].split(",")] == pytest.approx([0.1, 5, 0.2, 0.6, 0.4, 0.2, 0.0])


MADE_ROWS = [(None, True, 0.3), (None, True, 0.05), (None, False, 0.9), (None, False, 0.0, True), (None, True, 0.0)]


def test_a_file_error_during_a_run_is_one_line(capsys, tmp_path, tiny_llava_dir, image_file):
    # The summary cannot be written: a folder sits where summary.json goes (found only at the end).
    out = tmp_path / "run"
    (out / "summary.json").mkdir(parents=True)
    argv = ["certify", "--model", str(tiny_llava_dir), "--benchmark", "testbed", "--out", str(out)]
    assert main([*argv, "--n0", "1", "--n", "2", "--limit", "1", "--max-new-tokens", "1"]) == EXIT_USER_ERROR
    lines = capsys.readouterr().err.splitlines()  # progress lines, then the error
    assert lines[-1].startswith("smoothguard: error: Is a directory:") and "summary.json" in lines[-1]
    assert not any("Traceback" in line for line in lines)
