"""Tests of ``smoothguard.certify.run``."""

import json

import pytest
import torch

from smoothguard.certify.run import certify_items
from smoothguard.config import GuardConfig
from smoothguard.eval.base import EvalItem
from support.certify import check_certificate, loud_clip, made_record

MADE_RUN = [
    made_record("a", True, 0.3),
    made_record("b", True, 0.05),
    made_record("c", False, 0.9),  # wrong: never certified, whatever its radius
    made_record("d", False, 0.0, abstained=True),
    made_record("e", True, 0.0),
]


def test_certified_accuracy_and_table_row_values_on_a_made_up_run():
    """Mutation caught: wrong answers counted as certified (``correct and`` dropped), ``radius >= r`` turned
    into ``>``, the abstain rate or the interval computed over the wrong counts. By hand: at r=0 a, b, e
    (3/5); at r=0.05 a, b (2/5); at r=0.3 a (1/5); at r=1 none."""
    from smoothguard.certify.run import certified_accuracy, table_row
    from smoothguard.stats import clopper_pearson_interval

    expected = {0: 3 / 5, 0.05: 2 / 5, 0.3: 1 / 5, 1: 0.0}
    for radius, share in expected.items():
        assert certified_accuracy(MADE_RUN, radius) == pytest.approx(share)
    row = table_row(0.25, MADE_RUN, list(expected))
    assert row["sigma"] == 0.25 and row["items"] == 5 and row["abstain_rate"] == pytest.approx(1 / 5)
    assert row["certified_accuracy"] == pytest.approx({"0": 0.6, "0.05": 0.4, "0.3": 0.2, "1": 0.0})
    hits = {"0": 3, "0.05": 2, "0.3": 1, "1": 0}
    for radius, k in hits.items():
        assert row["certified_accuracy_ci"][radius] == pytest.approx(list(clopper_pearson_interval(k, 5)))
    assert certified_accuracy([], 0) == 0.0


def test_certify_run_on_audio_writes_records_and_a_table_that_agree(audio_model, tmp_path):
    """The run behind ``smoothguard certify`` on three clips at two sigmas: every record consistent with
    its counts, and each row's abstain rate, certified accuracy per radius and its 95% Clopper-Pearson
    interval recomputed here from the records (scipy's beta quantiles). Mutations caught: accuracy
    counting abstentions or wrong answers, the radius compared with > instead of >=, the interval of
    another count, the units of another space."""
    items = [
        EvalItem("silent", "Is there a sound? Answer yes or no.", torch.zeros(4000), {"label": "yes"}),
        EvalItem("noise", "Is it silent? Answer yes or no.", loud_clip(1), {"label": "no"}),
        EvalItem("long", "Is there a sound? Answer yes or no.", loud_clip(2, 8000), {"label": "yes"}),
    ]
    n0, n, alpha, sigmas = 2, 6, 0.05, [0.004, 0.5]
    radii = [0.0, 0.001, 0.1]
    settings = {"benchmark": "tiny-audio", "parser": "yes-no", "n0": n0, "n": n, "alpha": alpha, "max_new_tokens": 3}
    guard = GuardConfig(noise_space="waveform", seed=0)
    summary = certify_items(items, audio_model, tmp_path, guard=guard, sigmas=sigmas, settings=settings, radii=radii)
    assert summary["radius_units"] == "L2 over waveform samples" and summary["complete"]
    assert [row["sigma"] for row in summary["rows"]] == sigmas
    from scipy.stats import beta

    for sigma, row in zip(sigmas, summary["rows"], strict=True):
        records = [
            json.loads(line) for line in (tmp_path / f"sigma-{sigma:g}" / "records.jsonl").read_text().splitlines()
        ]
        assert [r["id"] for r in records] == [item.id for item in items]
        for record, item in zip(records, items, strict=True):
            check_certificate(record, sigma, n0, n, alpha)
            assert record["label"] == item.meta["label"] and record["sigma"] == sigma
            assert record["correct"] is (record["answer"] == item.meta["label"])
        assert row["items"] == 3
        assert row["abstain_rate"] == pytest.approx(sum(r["abstained"] for r in records) / 3)
        for radius in radii:
            hits = sum(r["correct"] and r["radius"] >= radius for r in records)
            assert row["certified_accuracy"][f"{radius:g}"] == pytest.approx(hits / 3)
            low = beta.ppf(0.025, hits, 3 - hits + 1) if hits else 0.0
            high = beta.ppf(0.975, hits + 1, 3 - hits) if hits < 3 else 1.0
            assert row["certified_accuracy_ci"][f"{radius:g}"] == pytest.approx([low, high], abs=1e-9)
    # This model answers every clip with text that parses as "yes", unanimously: certified at 0.2714 sigma
    # (0.0011 and 0.136), right for the two "yes" clips: 2/3 up to radius 0.001, and only sigma 0.5 at 0.1.
    accuracy = [row["certified_accuracy"] for row in summary["rows"]]
    assert [[a["0"], a["0.001"], a["0.1"]] for a in accuracy] == [[2 / 3, 2 / 3, 0.0], [2 / 3, 2 / 3, 2 / 3]]
    # A table at exactly the certified radius (a rerun resumes: no sampling, the table rebuilt) counts it.
    certified = next(r["radius"] for r in records if r["correct"])
    again = certify_items(
        items, audio_model, tmp_path, guard=guard, sigmas=sigmas[1:], settings=settings, radii=[certified]
    )
    assert again["rows"][0]["certified_accuracy"] == {f"{certified:g}": pytest.approx(2 / 3)}
