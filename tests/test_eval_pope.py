"""POPE: LLaVA's answer parsing and metrics, the published answer files scored as the reference scorer
scores them, the loader's joins and its errors, and ``smoothguard score pope``."""

import json

import pytest

from conftest import SHARED, needs_reference
from eval_support import make_pope_folder, write_jsonl
from smoothguard.cli import EXIT_USER_ERROR, main
from smoothguard.eval import DataError, get_benchmark, parse_yes_no, pope_metrics, score_pope_answers
from smoothguard.eval.pope import load_pope

FIXTURES = SHARED / "fixtures" / "pope"
needs_fixtures = needs_reference(FIXTURES, "the POPE answer/label files of ../shared")

# Expected values: an independent re-implementation of LLaVA's llava/eval/eval_pope.py (written for
# this check, not part of the package) run on the same files. That script takes each label file,
# keeps the answers whose question (looked up by question_id in llava_pope_test.jsonl) has that
# category, zips them in order with the labels, and prints TP FP TN FN, accuracy and F1. Listed:
# (tp, fp, tn, fn), accuracy, F1 exactly as that script computed them.
PUBLISHED = {
    "llava-1.5-7b-hf-baseline": {
        "adversarial": ((1161, 140, 1360, 339), 0.8403333333333334, 0.8289896465548019),
        "popular": ((1161, 73, 1427, 339), 0.8626666666666667, 0.8493050475493782),
        "random": ((1161, 40, 1370, 339), 0.8697594501718213, 0.8596815994076268),
    },
    "llava-1.5-7b-hf-smoothguard": {
        "adversarial": ((1024, 121, 1379, 476), 0.801, 0.7742911153119093),
        "popular": ((1029, 62, 1438, 471), 0.8223333333333334, 0.7942879197221152),
        "random": ((1025, 28, 1382, 475), 0.827147766323024, 0.8029768899334117),
    },
    "qwen2.5-vl-7b-baseline": {
        "adversarial": ((1094, 72, 1428, 406), 0.8406666666666667, 0.8207051762940736),
        "popular": ((1094, 51, 1449, 406), 0.8476666666666667, 0.8272211720226842),
        "random": ((1094, 8, 1402, 406), 0.8577319587628865, 0.8408916218293618),
    },
    "qwen2.5-vl-7b-smoothguard": {
        "adversarial": ((1167, 76, 1424, 333), 0.8636666666666667, 0.8508931826467373),
        "popular": ((1172, 43, 1457, 328), 0.8763333333333333, 0.8633517495395948),
        "random": ((1171, 13, 1397, 329), 0.8824742268041237, 0.8725782414307003),
    },
}


@pytest.mark.parametrize(
    ("answer", "yes"),
    [
        ("Yes", True),
        ("No", False),
        ("no.", False),
        ("No, there is not.", False),
        ("Yes, there is a dog in the image.", True),
        ("There is no dog.", False),
        ("It is not there", False),
        ("Yes. No.", True),  # only the first sentence counts
        ("NO", True),  # the reference matches "No", "no" and "not" case-sensitively
        ("Not really", True),
        ("No\nthere is none", True),  # ... and splits on spaces only
        ("", True),
    ],
)
def test_parse_yes_no_follows_llava(answer, yes):
    assert parse_yes_no(answer) is yes


def test_pope_metrics_by_hand():
    metrics = pope_metrics([True, True, False, False, True], [True, False, False, True, True])
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"], metrics["n"]) == (2, 1, 1, 1, 5)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3) and metrics["yes_ratio"] == pytest.approx(3 / 5)
    never_yes = pope_metrics([False, False], [True, False])
    assert never_yes["precision"] == 0.0 and never_yes["f1"] == 0.0 and never_yes["accuracy"] == 0.5
    with pytest.raises(DataError):
        pope_metrics([True], [True, False])


@needs_fixtures
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_answer_files_score_as_the_reference(name):
    scores = score_pope_answers(
        FIXTURES / "answers" / f"{name}.jsonl", FIXTURES / "llava_pope_test.jsonl", FIXTURES / "coco"
    )
    assert set(scores) == {"adversarial", "popular", "random", "mean"}
    for split, ((tp, fp, tn, fn), accuracy, f1) in PUBLISHED[name].items():
        got = scores[split]
        assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (tp, fp, tn, fn)
        assert got["n"] == (2910 if split == "random" else 3000)
        assert got["accuracy"] == pytest.approx(accuracy, abs=1e-12)
        assert got["f1"] == pytest.approx(f1, abs=1e-12)
        assert got["yes_ratio"] == pytest.approx((tp + fp) / got["n"])
    mean_f1 = sum(f1 for _, _, f1 in PUBLISHED[name].values()) / 3
    assert scores["mean"]["f1"] == pytest.approx(mean_f1, abs=1e-12)


def test_precision_and_recall_on_a_case_with_fp_not_equal_to_fn():
    """Mutation caught: precision and recall swapped (or either computed over the wrong denominator). Here
    tp 3, fp 1, tn 2, fn 2: precision 3/4 and recall 3/5 differ."""
    predictions = [True, True, True, True, False, False, False, False]
    labels = [True, True, True, False, True, True, False, False]
    metrics = pope_metrics(predictions, labels)
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (3, 1, 2, 2)
    assert metrics["precision"] == pytest.approx(3 / 4) and metrics["recall"] == pytest.approx(3 / 5)
    assert metrics["f1"] == pytest.approx(2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))
    assert metrics["yes_ratio"] == pytest.approx(4 / 8) and metrics["accuracy"] == pytest.approx(5 / 8)


def _reference_counts(name: str) -> dict[str, tuple[int, int, int, int]]:
    """(tp, fp, tn, fn) per split, counted here from the files as LLaVA's eval_pope.py does: the answers
    whose question has the split's category, in order, zipped with that split's labels; an answer is a
    no when a space-separated word of its first sentence (commas dropped) is No, no or not."""
    category = {}
    for line in (FIXTURES / "llava_pope_test.jsonl").read_text().splitlines():
        question = json.loads(line)
        category[question["question_id"]] = question["category"]
    answers = [json.loads(line) for line in (FIXTURES / "answers" / f"{name}.jsonl").read_text().splitlines()]
    counts = {}
    for split in ("adversarial", "popular", "random"):
        labels = [json.loads(line)["label"] for line in (FIXTURES / "coco" / f"coco_pope_{split}.json").open()]
        mine = [a["text"] for a in answers if category[a["question_id"]] == split]
        tp = fp = tn = fn = 0
        for text, label in zip(mine, labels, strict=True):
            first = text.split(".")[0].replace(",", "").split(" ")
            yes = not ("No" in first or "no" in first or "not" in first)
            tp += yes and label == "yes"
            fp += yes and label == "no"
            tn += not yes and label == "no"
            fn += not yes and label == "yes"
        counts[split] = (tp, fp, tn, fn)
    return counts


@needs_fixtures
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_answer_files_precision_and_recall(name):
    """Mutation caught: precision and recall swapped, on the published files (their fp and fn differ). The
    expected values are counted here from the labels and answers and agree with the reference counts."""
    scores = score_pope_answers(
        FIXTURES / "answers" / f"{name}.jsonl", FIXTURES / "llava_pope_test.jsonl", FIXTURES / "coco"
    )
    counted = _reference_counts(name)
    for split, (reference, _, _) in PUBLISHED[name].items():
        assert counted[split] == reference
        tp, fp, _, fn = counted[split]
        assert fp != fn
        assert scores[split]["precision"] == pytest.approx(tp / (tp + fp), abs=1e-12)
        assert scores[split]["recall"] == pytest.approx(tp / (tp + fn), abs=1e-12)
    for rate in ("precision", "recall"):
        mean = sum(scores[split][rate] for split in ("adversarial", "popular", "random")) / 3
        assert scores["mean"][rate] == pytest.approx(mean, abs=1e-12)


@needs_fixtures
def test_score_pope_cli_text_and_json(capsys):
    base = [
        "score",
        "pope",
        str(FIXTURES / "answers" / "llava-1.5-7b-hf-baseline.jsonl"),
        "--questions",
        str(FIXTURES / "llava_pope_test.jsonl"),
        "--labels",
        str(FIXTURES / "coco"),
    ]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "adversarial" in out and "84.03" in out and "82.90" in out and "1161" in out
    assert main([*base, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["random"]["tp"] == 1161 and scores["mean"]["n"] == 8910


def test_loader_joins_questions_and_labels(tmp_path):
    folder = make_pope_folder(tmp_path, per_split=4)
    joined = load_pope(folder / "llava_pope_test.jsonl", folder / "coco")
    assert [q.question_id for q in joined] == list(range(1, 13))
    assert [q.split for q in joined[::4]] == ["adversarial", "popular", "random"]
    assert [q.label for q in joined[:4]] == [False, True, False, True]
    items = get_benchmark("pope").load_items(folder, splits="random,popular")
    assert [i.meta["split"] for i in items] == ["popular"] * 4 + ["random"] * 4
    assert items[0].image == folder / "val2014" / "COCO_val2014_000000000000.jpg"
    assert items[0].prompt.endswith("Answer the question using a single word or phrase.")


def _rewrite(path, edit):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    write_jsonl(path, edit(rows))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: _rewrite(f / "coco" / "coco_pope_popular.json", lambda r: r[:-1]), "4 questions but 3 labels"),
        (lambda f: _rewrite(f / "coco" / "coco_pope_popular.json", lambda r: [r[0], r[0], *r[2:]]), "expected 2"),
        (
            lambda f: _rewrite(
                f / "coco" / "coco_pope_random.json", lambda r: [{**r[0], "text": "Is there a yak?"}, *r[1:]]
            ),
            "does not match label 1",
        ),
        (lambda f: _rewrite(f / "llava_pope_test.jsonl", lambda r: [*r, r[0]]), "appears twice"),
        (lambda f: (f / "coco" / "coco_pope_random.json").unlink(), "no label file"),
        (lambda f: (f / "coco" / "coco_pope_other.json").write_text(""), "no questions of category 'other'"),
        (lambda f: (f / "llava_pope_test.jsonl").write_text("{not json\n"), "line 1: not valid JSON"),
    ],
)
def test_bad_layouts_are_clear_errors(tmp_path, damage, message):
    folder = make_pope_folder(tmp_path, per_split=4)
    damage(folder)
    with pytest.raises(DataError, match=message):
        load_pope(folder / "llava_pope_test.jsonl", folder / "coco")


def test_answers_must_cover_every_question_once(tmp_path):
    folder = make_pope_folder(tmp_path, per_split=2)
    answers = [{"question_id": q, "text": "Yes"} for q in range(1, 7)]
    paths = (folder / "llava_pope_test.jsonl", folder / "coco")
    assert score_pope_answers(answers, *paths)["mean"]["n"] == 6
    with pytest.raises(DataError, match="lacks 1 of 6"):
        score_pope_answers(answers[:-1], *paths)
    with pytest.raises(DataError, match="answered twice"):
        score_pope_answers([*answers, answers[0]], *paths)
    with pytest.raises(DataError, match="question_id 99 is not in"):
        score_pope_answers([*answers, {"question_id": 99, "text": "No"}], *paths)
    with pytest.raises(DataError, match="is not question 1's"):
        score_pope_answers([{**answers[0], "prompt": "Is there a yak?"}, *answers[1:]], *paths)


def test_score_pope_cli_error_is_one_line(capsys, tmp_path):
    folder = make_pope_folder(tmp_path, per_split=2)
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": 1, "text": "Yes"}])
    argv = ["score", "pope", str(answers), "--questions", str(folder / "llava_pope_test.jsonl")]
    code = main([*argv, "--labels", str(folder / "coco")])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and err.startswith("smoothguard: error:") and "lacks 5 of 6" in err
    assert len(err.strip().splitlines()) == 1
