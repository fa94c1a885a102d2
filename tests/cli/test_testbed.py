"""Tests of ``smoothguard.cli.testbed``."""

import json
from functools import partial

import pytest

from smoothguard.cli import main
from smoothguard.stats import clopper_pearson_interval
from smoothguard.testbed import denoiser
from smoothguard.testbed.denoiser import (
    DenoiserConfig,
)
from smoothguard.testbed.ladder import THREATS

TINY = {"channels": (4, 8), "batch_size": 2, "probe_scenes": 2, "warmup": 1}


def test_cli_trains_resumes_and_evaluates(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(denoiser, "DenoiserConfig", partial(DenoiserConfig, **{**TINY, "batch_size": 1}))
    argv = ["testbed", "train-denoiser", "--out", str(tmp_path / "run"), "--steps", "2", "--threads", "1"]
    assert main([*argv, "--batch-size", "1"]) == 0
    out = capsys.readouterr().out
    assert "held-out PSNR (dB) on 200 scenes" in out and "0.25" in out
    assert main([*argv, "--batch-size", "1"]) == 0
    assert "resuming at step 2" in capsys.readouterr().out
    model = tmp_path / "run" / "model"
    assert main(["testbed", "evaluate-denoiser", "--model", str(model), "--scenes", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scenes"] == 3 and set(report["sigmas"]) == {"0.05", "0.1", "0.25", "0.5"}
    assert report["denoiser"]["channels"] == [4, 8]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train-denoiser", "--out", "{tmp}", "--steps", "0"], "--steps must be an integer >= 1, got 0"),
        (["train-denoiser", "--out", "{tmp}", "--lr", "-1"], "--lr must be a number > 0"),
        (["evaluate-denoiser", "--model", "{tmp}/nope"], "no such folder"),
        (["evaluate-denoiser", "--scenes", "0"], "--scenes must be an integer >= 1"),
    ],
)
def test_cli_mistakes_are_one_line_errors(tmp_path, capsys, argv, message):
    code = main(["testbed", *(arg.replace("{tmp}", str(tmp_path)) for arg in argv)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_cli_defaults_are_the_configs():
    from smoothguard.cli.main import build_parser

    args = build_parser().parse_args(["testbed", "train-denoiser", "--out", "unused"])
    defaults = DenoiserConfig()
    assert (args.steps, args.batch_size, args.lr, args.seed) == (
        defaults.steps,
        defaults.batch_size,
        defaults.lr,
        defaults.seed,
    )


def test_demo_json_on_a_reduced_budget(capsys, tmp_path):
    argv = ["demo", "--out", str(tmp_path), "--fresh", "--json", "--num-copies", "1", "--best-sigma", "0.5"]
    argv += ["--denoiser-sigma", "0.2"]
    for flag, value in (
        ("--pope-scenes", 1),
        ("--describe-scenes", 2),
        ("--clean-scenes", 3),
        ("--attack-images", 1),
        ("--attack-steps", 1),
        ("--adaptive-steps", 1),
        ("--per-request-steps", 1),
        ("--per-request-images", 2),
        ("--eot-samples", 1),
    ):
        argv += [flag, str(value)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    cells = summary["cells"]
    rows = {c["row"] for c in cells}
    assert rows == {*(t.name for t in THREATS), "worst-universal", "worst-request", "utility-pope", "utility-describe"}
    by_key = {(c["row"], c["column"], c["judge"]): c for c in cells}
    # Not run: the adaptive universal row for noise alone (it already falls to the plain attacks).
    skipped = {("adaptive-32", c) for c in ("paper", "best")}
    expected = {(row, column) for row in rows for column in ("undefended", "paper", "best", "denoised")} - skipped
    assert {(row, column) for row, column, _ in by_key} == expected
    assert len(cells) == 2 * len(expected) - 2 * 4  # two judges per ASR cell, one per utility cell
    for cell in cells:  # every cell says what it measured, on how many trials, and how sure it is
        assert {"judge", "threat", "attack", "sigma", "noise_space", "seed", "k", "n", "rate", "ci"} <= set(cell)
        assert cell["rate"] == cell["k"] / cell["n"] and cell["ci"] == list(
            clopper_pearson_interval(cell["k"], cell["n"])
        )
        assert ("mcnemar_p" in cell) == (cell["column"] != "undefended")
    assert by_key[("clean", "undefended", "complied")]["n"] == 3  # one request per clean scene
    assert by_key[("white-box-32", "paper", "not_refused")]["n"] == 32  # one image x 32 held-out requests
    assert by_key[("per-request-16", "denoised", "complied")]["n"] == 2  # one image per attacked request
    assert by_key[("worst-request", "denoised", "complied")]["n"] == 2
    assert by_key[("utility-pope", "best", "correct")]["n"] == 6
    assert by_key[("transfer-16", "best", "complied")]["made_on"] == "testbed-surrogate"
    assert by_key[("per-request-32", "best", "complied")]["sigma"] == 0.5
    denoised = by_key[("adaptive-32", "denoised", "complied")]
    assert (denoised["sigma"], denoised["noise_space"], denoised["purifier"]) == (0.2, "pixel", "testbed-denoiser")
    assert by_key[("per-request-32", "paper", "complied")]["purifier"] is None
    assert by_key[("white-box-16", "undefended", "complied")]["sigma"] == 0.0
    assert by_key[("per-request-8", "undefended", "complied")]["attack"] == "white-box"
    assert by_key[("per-request-8", "denoised", "complied")]["attack"] == "adaptive"
    assert by_key[("adaptive-32", "undefended", "complied")]["attack"] == "white-box"
    universal = [t.name for t in THREATS if t.universal]
    for judge in ("complied", "not_refused"):  # the worst cases: at least every attack's own rate
        for column in ("undefended", "paper", "best", "denoised"):
            ran = [t.name for t in THREATS if t.kind != "clean" and (t.name, column, judge) in by_key]
            worst = by_key[("worst-universal", column, judge)]["k"]
            assert worst >= max(by_key[(row, column, judge)]["k"] for row in ran if row in universal)
            worst = by_key[("worst-request", column, judge)]["k"]
            assert worst >= max(by_key[(row, column, judge)]["k"] for row in ran if row not in universal)
    folders = ("transfer-16", "white-box-32", "per-request-8", "adaptive-32-sigma0.2-pixel-testbed-denoiser")
    folders += ("per-request-32-sigma0.1-normalized", "per-request-8-sigma0.2-pixel-testbed-denoiser")
    for folder in folders:
        assert (tmp_path / "attacks" / folder / "0.png").is_file()
        sidecar = json.loads((tmp_path / "attacks" / folder / "0.png.json").read_text())
        assert len(sidecar["losses"]) == 1 and sidecar["best_loss"] == sidecar["losses"][0]  # the loss curve
    assert not (tmp_path / "attacks" / "adaptive-32-sigma0.1-normalized").exists()  # not run for noise alone
    assert summary["images"]["adaptive-32/undefended"]["folder"] == "attacks/white-box-32"  # no noise to adapt to
    assert len(summary["images"]["per-request-16/denoised"]["best_losses"]) == 2
    checks = {check["row"]: check for check in summary["attack_checks"]}
    assert set(checks) == {t.name for t in THREATS if t.kind != "clean"}
    assert checks["per-request-16"]["required"] and not checks["transfer-16"]["required"]
    assert checks["white-box-32"]["trials"] == 32 and checks["per-request-16"]["trials"] == 2
    assert not checks["white-box-32"]["working"]  # one step cannot beat the model: said, not hidden
    assert (tmp_path / "demo.png").is_file() and (tmp_path / "summary.json").is_file()
    assert isinstance(summary["seconds"], float)  # recorded; its size is a benchmark matter, not a test's
    phases = [line for line in captured.err.splitlines() if line.startswith("[demo] ")]
    assert phases[0].startswith("[demo] utility, undefended: 6 yes/no + 2 descriptions (")
    assert any(line.startswith("[demo] adaptive universal, eps 32 image 0: optimising (1 steps)") for line in phases)
    assert any(line.startswith("[demo] per-request adaptive, eps 16 image 1: optimising (1 steps)") for line in phases)
    assert "[attack] done: 1/1 steps in " in captured.err


def test_demo_settings_are_checked_before_any_model_loads(capsys, tmp_path):
    argv = ["demo", "--out", str(tmp_path), "--attack-steps", "10", "--adaptive-steps", "5"]
    assert main(argv) == 2
    assert "--adaptive-steps (5) must be at least --attack-steps (10)" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--attack-images", "0"]) == 2
    assert "--attack-images must be an integer >= 1" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--best-sigma", "99"]) == 2
    assert "sigma" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--denoiser-sigma", "2"]) == 2
    assert "sigma 2 is over the largest sensible value in pixel space" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--purifier", "nope"]) == 2
    assert "unknown purifier 'nope'" in capsys.readouterr().err


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
