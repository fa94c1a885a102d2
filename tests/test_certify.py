"""Certification (Clopper–Pearson, PREDICT, CERTIFY), answer parsers, adaptive sampling and ``smoothguard certify``."""

import itertools
import json
import math
from statistics import NormalDist

import pytest
import torch

from eval_support import make_pope_folder
from smoothguard import ConfigError, SmoothGuard
from smoothguard.certify import (
    ChoiceParser,
    RefusalParser,
    Smoothed,
    YesNoParser,
    certified_radius,
    certify_from_counts,
    noisy_answers,
    predict_from_counts,
)
from smoothguard.cli import EXIT_USER_ERROR, main
from smoothguard.sampling import AdaptiveSampling
from smoothguard.stats import clopper_pearson_lower

PROMPT = "What is in the image?"


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def reference_lower_bound(k: int, n: int, alpha: float) -> float:
    """The one-sided Clopper–Pearson bound by its definition: the p with P(X >= k | p) = alpha (bisection)."""
    low, high = 0.0, 1.0
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if binomial_tail(k, n, middle) < alpha else (low, middle)
    return low


# ----------------------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize(
    ("k", "n", "alpha", "expected"),
    [
        (10, 10, 0.05, 0.05 ** (1 / 10)),  # all successes: alpha ** (1/n) = 0.7411
        (100, 100, 0.001, 0.001 ** (1 / 100)),  # 0.9333, Cohen et al.'s n = 100
        (1, 10, 0.05, 1 - 0.95 ** (1 / 10)),  # one success: 1 - (1 - alpha) ** (1/n)
        (0, 10, 0.05, 0.0),
    ],
)
def test_clopper_pearson_closed_forms(k, n, alpha, expected):
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("k", "n", "alpha"), [(5, 10, 0.05), (7, 20, 0.05), (50, 100, 0.001), (990, 1000, 0.001)])
def test_clopper_pearson_matches_its_definition(k, n, alpha):
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(reference_lower_bound(k, n, alpha), rel=1e-7)


@pytest.mark.parametrize(("k", "n", "alpha"), [(11, 10, 0.05), (1, 0, 0.05), (-1, 10, 0.05), (5, 10, 0), (5, 10, 1)])
def test_clopper_pearson_rejects_bad_input(k, n, alpha):
    with pytest.raises(ConfigError):
        clopper_pearson_lower(k, n, alpha)


def test_radius_is_monotone_in_p_and_zero_at_or_below_one_half():
    grid = [0.5 + step / 1000 for step in range(1, 500)]
    radii = [certified_radius(p, 0.25) for p in grid]
    assert all(a < b for a, b in itertools.pairwise(radii))
    assert radii[0] > 0
    assert certified_radius(NormalDist().cdf(1.0), 0.25) == pytest.approx(0.25)  # sigma * Phi^-1(Phi(1))
    assert [certified_radius(p, 0.25) for p in (0.0, 0.3, 0.5)] == [0.0, 0.0, 0.0]
    with pytest.raises(ConfigError):
        certified_radius(1.5, 0.25)


def test_certify_from_counts_certifies_a_clear_vote():
    certificate = certify_from_counts({"yes": 10}, {"yes": 100}, 0.001, 0.25, "pixel")
    p_lower = 0.001 ** (1 / 100)
    assert certificate.answer == "yes" and not certificate.abstained
    assert certificate.p_lower == pytest.approx(p_lower)
    assert certificate.radius == pytest.approx(0.25 * NormalDist().inv_cdf(p_lower))
    assert (certificate.n0, certificate.n, certificate.noise_space) == (10, 100, "pixel")
    assert json.loads(json.dumps(certificate.to_dict()))["abstained"] is False


def test_certify_from_counts_abstains_on_an_even_split_and_selects_on_n0():
    split = certify_from_counts({"yes": 5, "no": 5}, {"yes": 50, "no": 50}, 0.001, 0.25, "pixel")
    assert split.abstained and split.answer is None and split.radius == 0.0
    assert split.p_lower < 0.5
    # The label is chosen on the selection counts, then bounded on the estimation counts (Cohen et al.).
    chosen = certify_from_counts({"no": 10}, {"yes": 90, "no": 10}, 0.001, 0.25, "pixel")
    assert chosen.top == "no" and chosen.abstained
    more = [certify_from_counts({"a": 1}, {"a": k, "b": 100 - k}, 0.001, 0.5, "pixel").radius for k in (70, 80, 90)]
    assert 0 < more[0] < more[1] < more[2]


def test_predict_from_counts_tests_the_top_two():
    assert predict_from_counts({"a": 50, "b": 50}, 0.001).abstained
    clear = predict_from_counts({"a": 90, "b": 10, "c": 3}, 0.001)
    assert clear.answer == "a" and clear.n == 103
    assert clear.p_value == pytest.approx(2 * binomial_tail(90, 100, 0.5))  # two-sided, a against b only
    with pytest.raises(ConfigError, match="no answers"):
        predict_from_counts({}, 0.001)


# ------------------------------------------------------------------------------------------------- parsers
def test_answer_parsers():
    yes_no = YesNoParser()
    assert [yes_no(a) for a in ("Yes, there is a cat.", "No.", "yes", "There is not a cat")] == ["yes", "no"] * 2
    choice = ChoiceParser("ABCD")
    answers = ("B", "(C) a cat", "D. the dog", "The answer is A.", "ANSWER: (B)", "E", "the answer is a cat")
    assert [choice(a) for a in answers] == ["B", "C", "D", "A", "B", "unparsed", "unparsed"]
    refusal = RefusalParser()
    assert [refusal(a) for a in ("I’m sorry, I can't help.", "Sure, here it is.")] == ["refuse", "comply"]
    with pytest.raises(ConfigError):
        ChoiceParser("ab")


# ------------------------------------------------------------------------------- sampling on a tiny model
def test_certify_returns_a_radius_when_the_answers_agree(tiny_llava, image_file):
    guard = SmoothGuard(tiny_llava, sigma=0.01, noise_space="pixel", seed=0)
    clean = SmoothGuard(tiny_llava, num_copies=0).generate(PROMPT, image=image_file, max_new_tokens=4).text
    same = lambda answer: "clean" if answer == clean else "other"  # noqa: E731
    certificate = Smoothed(guard, same).certify(PROMPT, image_file, n0=5, n=30, alpha=0.001, max_new_tokens=4)
    assert certificate.answer == "clean" and certificate.counts == {"clean": 30}
    assert certificate.radius == pytest.approx(0.01 * NormalDist().inv_cdf(0.001 ** (1 / 30)))
    assert certificate.noise_space == "pixel"
    assert Smoothed(guard, same).predict(PROMPT, image_file, n=30, alpha=0.001, max_new_tokens=4).answer == "clean"


def test_certify_abstains_when_the_answers_split_and_is_reproducible(tiny_llava, image_file):
    # Pixel sigma 1.0 (the largest allowed, clamped) leaves little of the image: this tiny model's answers
    # then split between its clean answer and others (checked: 40 / 20 with seed 3), too close to call.
    clean = SmoothGuard(tiny_llava, num_copies=0).generate(PROMPT, image=image_file, max_new_tokens=4).text
    same = lambda answer: "clean" if answer == clean else "other"  # noqa: E731
    guard = SmoothGuard(tiny_llava, sigma=1.0, noise_space="pixel", seed=3)
    first = Smoothed(guard, same).certify(PROMPT, image_file, n0=10, n=60, max_new_tokens=4)
    assert min(first.counts.values()) >= 15
    assert first.abstained and first.radius == 0.0 and first.p_lower <= 0.5
    again = Smoothed(guard, same).certify(PROMPT, image_file, n0=10, n=60, max_new_tokens=4)
    assert again.to_dict() == first.to_dict()


def test_samples_depend_on_the_seed_not_on_the_batch_size(tiny_llava, image_file):
    def answers(seed, batch_size=None):
        guard = SmoothGuard(tiny_llava, sigma=1.0, noise_space="pixel", seed=seed, batch_size=batch_size)
        return noisy_answers(guard, PROMPT, image_file, range(40), max_new_tokens=4)

    reference = answers(0)
    assert answers(0, batch_size=7) == reference
    assert answers(1) != reference


# ----------------------------------------------------------------------------------------- adaptive sampling
def test_adaptive_schedule_and_level():
    plan = AdaptiveSampling(alpha=0.05, round_size=2)
    # Looks at 2 and 4 copies can never stop (0.5 ** m >= level); 6 and 8 can: alpha / 2 each.
    assert plan.level(10) == pytest.approx(0.025)
    assert plan.schedule(10) == [6, 8, 10]
    assert plan.decided(6, 6, 10) and not plan.decided(5, 6, 10)
    assert plan.schedule(4) == [4]
    for bad in ({"alpha": 1.5}, {"round_size": 0}):
        with pytest.raises(ConfigError):
            AdaptiveSampling(**bad)


def recorded_pixels(model, monkeypatch) -> list[torch.Tensor]:
    calls: list[torch.Tensor] = []
    original = model.model.generate

    def recording(**batch):
        calls.append(batch["pixel_values"].clone())
        return original(**batch)

    monkeypatch.setattr(model.model, "generate", recording)
    return calls


def test_adaptive_stops_early_when_all_answers_agree(tiny_llava, minilm, image_file, monkeypatch):
    full = SmoothGuard(tiny_llava, sigma=0.0, num_copies=10, embedder=minilm)
    adaptive = SmoothGuard(tiny_llava, sigma=0.0, num_copies=10, embedder=minilm, adaptive=True)
    expected = full.generate(PROMPT, image=image_file, max_new_tokens=4)
    result = adaptive.generate(PROMPT, image=image_file, max_new_tokens=4)
    assert result.copies_used == 6 < expected.copies_used == 10
    assert result.text == expected.text and result.candidates == expected.candidates[:7]
    data = result.to_dict()
    assert data["copies_used"] == 6 and data["config"]["adaptive"] == {"alpha": 0.05, "round_size": 2}
    assert "adaptive" not in expected.config


def test_adaptive_copies_are_the_first_of_the_full_draw(tiny_llava, minilm, image_file, monkeypatch):
    pixels = recorded_pixels(tiny_llava, monkeypatch)
    common = {"sigma": 0.01, "num_copies": 10, "embedder": minilm, "seed": 5}
    SmoothGuard(tiny_llava, **common).generate(PROMPT, image=image_file, max_new_tokens=4)
    result = SmoothGuard(tiny_llava, adaptive=True, **common).generate(PROMPT, image=image_file, max_new_tokens=4)
    assert result.copies_used == 6 and len(pixels) == 2
    assert torch.equal(pixels[1], pixels[0][:7])  # clean + the same first 6 noisy copies


def test_adaptive_uses_every_copy_when_the_answers_split(tiny_llava, minilm, image_file):
    # Normalized sigma 1.0 splits this tiny model's answers (6 distinct, clusters of 8 and 3 with seed 0).
    common = {"sigma": 1.0, "num_copies": 10, "embedder": minilm, "seed": 0}
    full = SmoothGuard(tiny_llava, **common).generate(PROMPT, image=image_file, max_new_tokens=6)
    result = SmoothGuard(tiny_llava, adaptive=True, **common).generate(PROMPT, image=image_file, max_new_tokens=6)
    assert full.num_distinct > 1
    assert result.copies_used == 10
    assert result.candidates == full.candidates and result.text == full.text


def test_adaptive_batch_equals_one_by_one(tiny_llava, minilm, image_file):
    # At normalized sigma 0.4, seed 1, this tiny model's vote is decided early for the first prompt, not the
    # second.
    guard = SmoothGuard(tiny_llava, sigma=0.4, seed=1, num_copies=10, embedder=minilm, adaptive=True, batch_size=4)
    prompts = ["Hi?", "Is there a dog?"]
    together = guard.generate_batch(prompts, [image_file] * 2, max_new_tokens=4)
    alone = [guard.generate(p, image=image_file, max_new_tokens=4) for p in prompts]
    assert [r.copies_used for r in together] == [r.copies_used for r in alone] == [6, 10]
    assert [r.candidates for r in together] == [r.candidates for r in alone]


def test_adaptive_option_is_validated(tiny_llava):
    with pytest.raises(ConfigError, match="adaptive"):
        SmoothGuard(tiny_llava, adaptive="yes")


# ------------------------------------------------------------------------------------------------------ CLI
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


# ------------------------------------------------------------------------------------- paired statistics
def test_two_sided_interval_and_mcnemar_match_their_definitions():
    from smoothguard.stats import clopper_pearson_interval, mcnemar_exact, rate_with_interval

    low, high = clopper_pearson_interval(5, 8)
    # Each tail holds 2.5%: P(X >= 5 | low) = 0.025 and P(X <= 5 | high) = 0.025.
    assert binomial_tail(5, 8, low) == pytest.approx(0.025, abs=1e-9)
    assert 1 - binomial_tail(6, 8, high) == pytest.approx(0.025, abs=1e-9)
    assert clopper_pearson_interval(0, 8)[0] == 0.0 and clopper_pearson_interval(8, 8)[1] == 1.0
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(0, 2) == pytest.approx(0.5)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 2**10)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert rate_with_interval(5, 8) == {"k": 5, "n": 8, "rate": 0.625, "ci": [low, high]}


# ------------------------------------------------------------------------ certified accuracy on a made-up run
def made_record(item_id, correct, radius, abstained=False):
    return {"id": item_id, "correct": correct, "radius": radius, "abstained": abstained}


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
