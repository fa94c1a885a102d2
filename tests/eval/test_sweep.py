"""Sigma sweeps on a tiny LLaVA: one run per sigma, both figures (utility and ASR) with their CSVs,
finished runs reused without loading the model, and the ``sweep`` command."""

import csv

import pytest
from PIL import Image

from smoothguard.config import GuardConfig
from smoothguard.eval import GuardSpec, run_sweep
from support.eval import make_mm_safety_folder, make_pope_folder


def read_csv(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def is_png(path):
    with Image.open(path) as image:
        return image.format == "PNG" and image.size[0] > 300


def test_sweep_writes_utility_and_asr_figures_and_reuses_runs(tmp_path, tiny_llava, tiny_llava_dir):
    spec = GuardSpec(model=str(tiny_llava_dir), guard=GuardConfig(num_copies=1))
    pope = make_pope_folder(tmp_path / "pope", per_split=2)
    result = run_sweep("pope", spec, [0.0, 0.3], tmp_path / "pope-sweep", data=pope, model=tiny_llava, max_new_tokens=2)
    rows = read_csv(tmp_path / "pope-sweep" / "utility-vs-sigma.csv")
    assert [row["sigma"] for row in rows] == ["0.0", "0.3"]
    assert list(rows[0])[:7] == [
        "sigma",
        "noise_space",
        "purifier",
        "complete",
        "items_done",
        "mean.f1",
        "mean.accuracy",
    ]
    assert rows[0]["noise_space"] == "normalized"
    assert float(rows[1]["mean.f1"]) == pytest.approx(result["rows"][1]["mean.f1"]) and rows[1]["items_done"] == "6"
    assert is_png(tmp_path / "pope-sweep" / "utility-vs-sigma.png")
    assert (tmp_path / "pope-sweep" / "sigma-0.3" / "summary.json").is_file()

    def no_model():
        raise AssertionError("finished runs must be reused without loading the model")

    again = run_sweep("pope", spec, [0.0, 0.3], tmp_path / "pope-sweep", data=pope, model=no_model, max_new_tokens=2)
    assert again["rows"] == result["rows"]

    mm = make_mm_safety_folder(tmp_path / "mm", scenarios=("01-Illegal_Activitiy",), per_scenario=2)
    run_sweep("mm-safety", spec, [0.1, 0.2], tmp_path / "mm-sweep", data=mm, model=tiny_llava, max_new_tokens=2)
    rows = read_csv(tmp_path / "mm-sweep" / "asr-vs-sigma.csv")
    assert [row["sigma"] for row in rows] == ["0.1", "0.2"] and "01-Illegal_Activitiy.asr" in rows[0]
    assert 0.0 <= float(rows[0]["all.asr"]) <= 1.0
    assert is_png(tmp_path / "mm-sweep" / "asr-vs-sigma.png")
