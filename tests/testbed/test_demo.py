"""Tests of ``smoothguard.testbed.demo``."""

from smoothguard.stats import rate_with_interval
from smoothguard.testbed.demo import column_title, format_table


def test_demo_table_prints_the_summarys_numbers():
    from smoothguard.testbed.demo import WORST_ROWS
    from smoothguard.testbed.ladder import JUDGES, THREATS

    columns = {
        "undefended": {"sigma": 0.1, "noise_space": "normalized", "num_copies": 0, "seed": 0},
        "paper": {"sigma": 0.1, "noise_space": "normalized", "num_copies": 6, "seed": 0},
        "best": {"sigma": 0.25, "noise_space": "normalized", "num_copies": 6, "seed": 0},
    }
    rows = [(t.name, judge) for t in THREATS for judge in JUDGES] + [(w, j) for w in WORST_ROWS for j in JUDGES]
    rows += [("utility-pope", "correct"), ("utility-describe", "named")]
    cells = []
    for number, (row, judge) in enumerate(rows):
        for offset, column in enumerate(columns):
            if row == "adaptive-32" and column == "best":
                continue  # a cell the ladder did not run
            cell = {"row": row, "column": column, "judge": judge, **rate_with_interval(number + offset, 256)}
            if column != "undefended":
                cell["mcnemar_p"] = 0.5 / (offset + 1)
            cells.append(cell)
    attack_rows = [t.name for t in THREATS if t.kind != "clean"]
    images = {f"{row}/{column}": {"best_losses": [0.25, 0.5, 2.0]} for row in attack_rows for column in columns}
    checks = [
        {"row": row, "successes": 31, "trials": 32, "rate": 31 / 32, "median_best_loss": 0.5, "min_success": 0.95}
        | {"working": row != "per-request-16", "required": row in ("white-box-32", "per-request-16")}
        for row in attack_rows
    ]
    summary = {
        "cells": cells,
        "settings": {"columns": columns, "eot_samples": 8, "attack_images": 4, "per_request_steps": 60},
        "images": images,
        "attack_checks": checks,
        "seconds": 12.4,
    }
    lines = format_table(summary).splitlines()
    assert lines[0].split()[-3:] == ["sigma", "0.25", "normalized"] and "sigma 0.1 normalized" in lines[0]
    # clean images, complied: 0/256, 1/256, 2/256 (Clopper-Pearson upper bounds 0.0143, 0.0216, 0.0279, by hand)
    assert lines[1].startswith("clean images (no attack)")
    assert "0.000 [0.00, 0.01] (0/256)" in lines[1] and "0.004 [0.00, 0.02] (1/256) p=0.25" in lines[1]
    assert lines[1].endswith("0.008 [0.00, 0.03] (2/256) p=0.17")
    adaptive = next(line for line in lines if line.startswith("adaptive universal, eps 32"))
    assert adaptive.endswith("not run")
    worst = next(line for line in lines if line.startswith("worst case per request, any attack"))
    assert "(20/256)" in worst.split("]")[1]  # rows numbered per (row, judge): the per-request worst complied is 20
    pope = next(line for line in lines if line.startswith("testbed-pope accuracy"))
    assert pope.endswith("(24/256) p=0.17")  # row 22, best column: 22 + 2
    losses = next(line for line in lines if line.startswith("per-request adaptive, eps 8") and "[" not in line)
    assert losses.split()[-3:] == ["0.5", "0.5", "0.5"]  # the median of 0.25, 0.5 and 2.0 per column
    required = next(line for line in lines if "per-request adaptive, eps 16" in line and "undefended complied" in line)
    assert required.startswith(" * ") and "31/32 = 0.969" in required and required.endswith("BROKEN ATTACK")
    assert any(line.startswith("BROKEN ATTACK: per-request adaptive, eps 16 do not drive") for line in lines)
    assert lines[-1].endswith("12 s)") and "6 noisy copies + the clean one" in lines[-1]
    assert "4 noisy copies" not in lines[-1] and "8 noisy copies and its clean candidate" in lines[-1]
    denoised = {"sigma": 0.25, "noise_space": "pixel", "purifier": "testbed-denoiser"}
    assert column_title("denoised", denoised) == "sigma 0.25 pixel + testbed-denoiser"
    assert column_title("undefended", columns["undefended"]) == "undefended"
