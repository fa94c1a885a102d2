"""POPE: LLaVA's answer parsing and metrics, the published answer files scored as the reference scorer
scores them, the loader's joins and its errors, and ``smoothguard score pope``."""

import json
import shutil

import pytest

from smoothguard.eval import DataError, get_benchmark, pope_metrics, score_pope_answers
from smoothguard.eval.pope import load_pope, pope_scores
from support.common import SHARED, exact, needs_reference
from support.eval import make_pope_folder, starts_with, write_jsonl

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


@pytest.fixture
def pope(tmp_path):
    folder = make_pope_folder(tmp_path / "pope", per_split=2)
    return folder, folder / "llava_pope_test.jsonl", folder / "coco"


# pope_metrics


def test_length_mismatch_message():
    """pope_metrics: the length-mismatch DataError message -> None."""
    with pytest.raises(DataError, match=exact("3 predictions for 2 labels")):
        pope_metrics([True, False, True], [True, False])


def test_empty_message():
    """pope_metrics: "no predictions to score" -> None / "XX...XX" / upper case."""
    with pytest.raises(DataError, match=exact("no predictions to score")):
        pope_metrics([], [])


def test_precision_when_tp_equals_fp():
    """pope_metrics: ``if tp + fp`` -> ``if tp - fp`` (tp = fp = 1: precision 1/2, not 0)."""
    assert pope_metrics([True, True], [True, False])["precision"] == 0.5


def test_recall_when_tp_equals_fn():
    """pope_metrics: ``if tp + fn`` -> ``if tp - fn`` (tp = fn = 1: recall 1/2, not 0)."""
    assert pope_metrics([True, False], [True, True])["recall"] == 0.5


def test_recall_without_positive_labels_is_zero():
    """pope_metrics: recall's zero-division value 0.0 -> 1.0 (no yes label: tp + fn = 0)."""
    assert pope_metrics([False, True], [False, False])["recall"] == 0.0


# pope_scores


def test_mean_divides_by_the_number_of_splits():
    """pope_scores: ``sum(...) / len(splits)`` -> ``* len(splits)`` (two splits, accuracy 1 and 0)."""
    scores = pope_scores([("a", True, True), ("b", True, False)])
    assert scores["mean"]["accuracy"] == 0.5


# load_pope / _join_split


def test_question_file_is_named_in_json_errors(pope):
    """load_pope: read_jsonl's name "POPE question file" -> None / "XX...XX" / lower / upper case."""
    _, questions, labels = pope
    questions.write_text("{not json\n")
    with pytest.raises(DataError, match=starts_with(f"POPE question file {questions}, line 1: not valid JSON")):
        load_pope(questions, labels)


def test_question_missing_field_names_its_line(pope):
    """load_pope: ``enumerate(rows, 1)`` -> ``enumerate(rows)`` / ``enumerate(rows, 2)``; require's
    ``where`` -> None."""
    _, questions, labels = pope
    _rewrite(questions, lambda r: [r[0], {k: v for k, v in r[1].items() if k != "category"}, *r[2:]])
    with pytest.raises(DataError, match=exact(f"POPE question file {questions}, line 2: missing field(s) category")):
        load_pope(questions, labels)


def test_missing_label_folder_message(pope, tmp_path):
    """load_pope: the missing-label-folder DataError message -> None."""
    _, questions, _ = pope
    absent = tmp_path / "absent"
    message = f"POPE label folder {absent} does not exist (it holds coco_pope_<split>.json)"
    with pytest.raises(DataError, match=exact(message)):
        load_pope(questions, absent)


def test_empty_label_folder_message(pope, tmp_path):
    """load_pope: the no-label-files DataError message -> None."""
    _, questions, _ = pope
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=exact(f"POPE label folder {empty} has no coco_pope_<split>.json files")):
        load_pope(questions, empty)


def test_label_count_error_names_the_split(pope):
    """load_pope: ``_join_split(split, ...)`` -> ``_join_split(None, ...)``."""
    _, questions, labels = pope
    label_file = labels / "coco_pope_popular.json"
    _rewrite(label_file, lambda r: r[:-1])
    message = f"POPE split 'popular': 2 questions but 1 labels in {label_file}"
    with pytest.raises(DataError, match=exact(message)):
        load_pope(questions, labels)


def test_label_file_is_named_in_json_errors(pope):
    """_join_split: read_jsonl's name "POPE label file" -> None / "XX...XX" / lower / upper case."""
    _, questions, labels = pope
    label_file = labels / "coco_pope_popular.json"
    label_file.write_text("{not json\n")
    with pytest.raises(DataError, match=starts_with(f"POPE label file {label_file}, line 1: not valid JSON")):
        load_pope(questions, labels)


def test_label_missing_field_names_its_line(pope):
    """_join_split: ``where = f"POPE label file ..., line ..."`` -> None; require's ``where`` -> None."""
    _, questions, labels = pope
    label_file = labels / "coco_pope_random.json"
    _rewrite(label_file, lambda r: [r[0], {k: v for k, v in r[1].items() if k != "label"}])
    with pytest.raises(DataError, match=exact(f"POPE label file {label_file}, line 2: missing field(s) label")):
        load_pope(questions, labels)


def test_bad_label_value_message(pope):
    """_join_split: the bad-label DataError message -> None; ``label['label']`` in it -> ``'XXlabelXX'`` /
    ``'LABEL'``."""
    _, questions, labels = pope
    label_file = labels / "coco_pope_random.json"
    _rewrite(label_file, lambda r: [{**r[0], "label": "maybe"}, r[1]])
    message = f"POPE label file {label_file}, line 1: label must be yes or no, got 'maybe'"
    with pytest.raises(DataError, match=exact(message)):
        load_pope(questions, labels)


# score_pope_answers


def test_answer_list_is_called_answers_with_line_numbers(pope):
    """score_pope_answers: ``source`` -> None / always the object / "XXanswersXX" / "ANSWERS";
    ``enumerate(rows, 1)`` -> no start / start 2; ``where`` -> None; require's ``where`` -> None."""
    _, questions, labels = pope
    answers = [{"question_id": 1, "text": "No"}, {"question_id": 2}]
    with pytest.raises(DataError, match=exact("POPE answer file answers, line 2: missing field(s) text")):
        score_pope_answers(answers, questions, labels)


def test_answer_file_path_is_read_and_named(pope, tmp_path):
    """score_pope_answers: a path argument -> read as a list (``and False``), read_jsonl called with
    None / without the path / without or with a changed name, ``source`` not the path."""
    _, questions, labels = pope
    path = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": q, "text": "Yes"} for q in range(1, 7)])
    assert score_pope_answers(path, questions, labels)["mean"]["n"] == 6
    assert score_pope_answers(str(path), questions, labels)["mean"]["n"] == 6
    write_jsonl(path, [{"question_id": 1}])
    with pytest.raises(DataError, match=exact(f"POPE answer file {path}, line 1: missing field(s) text")):
        score_pope_answers(path, questions, labels)
    path.write_text("{not json\n")
    with pytest.raises(DataError, match=starts_with(f"POPE answer file {path}, line 1: not valid JSON")):
        score_pope_answers(path, questions, labels)


def test_prompts_match_on_their_first_line_and_text_is_parsed(pope):
    """score_pope_answers: the prompt check's ``split("\\n")[0]`` -> ``split(None)`` / ``"XX\\nXX"`` /
    ``[1]`` (either side), ``str(row["prompt"])`` -> ``str(None)``; ``parse_yes_no(str(row["text"]))``
    -> ``str(None)`` (reads "None" as yes). A full prompt and a first-line-only prompt both match."""
    _, questions, labels = pope
    rows = [json.loads(line) for line in questions.read_text().splitlines()]
    answers = [{"question_id": r["question_id"], "text": "No"} for r in rows]
    answers[0]["prompt"] = rows[0]["text"]  # the full prompt, with its second line
    answers[1]["prompt"] = rows[1]["text"].split("\n")[0]  # only the question
    assert "\n" in rows[0]["text"]
    scores = score_pope_answers(answers, questions, labels)
    # every answer no; per split labels (no, yes): tp 0, fp 0, fn 1, tn 1
    assert scores["mean"] == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0, "n": 6}


# PopeBenchmark


def test_load_items_without_data_dir_with_options_and_split_list(pope, tmp_path):
    """load_items: ``Path(data_dir) if data_dir is not None`` -> always ``Path(data_dir)``; ``images``
    ignored (``and False``) / ``Path(None)``; _names: a list taken as a string (``or True``) /
    ``list(None)``."""
    folder, questions, labels = pope
    images = tmp_path / "images"
    shutil.move(folder / "val2014", images)
    items = get_benchmark("pope").load_items(None, questions=questions, labels=labels, images=images, splits=["random"])
    assert [i.id for i in items] == ["5", "6"]
    assert items[0].image == images / "COCO_val2014_000000000000.jpg"


def test_missing_image_folder_message(pope, tmp_path):
    """load_items: the missing-image-folder DataError message -> None."""
    folder, _, _ = pope
    absent = tmp_path / "absent"
    message = f"POPE image folder {absent} does not exist: put COCO val2014 there or pass --images DIR"
    with pytest.raises(DataError, match=exact(message)):
        get_benchmark("pope").load_items(folder, images=absent)


def test_unknown_split_message(pope):
    """load_items: ``unknown`` -> None; ``present`` -> None / join(None) / "XX, XX" / sorted(None); the
    message -> None / join(None) / "XX, XX"."""
    folder, _, _ = pope
    message = "unknown POPE split(s) aaa, bogus; the question file has adversarial, popular, random"
    with pytest.raises(DataError, match=exact(message)):
        get_benchmark("pope").load_items(folder, splits="random,bogus,aaa")


def test_item_meta(pope):
    """load_items: meta keys "question_id" / "image" renamed; "label" always yes (``or True``) / always no
    (``and False``) / "yes" or "no" changed."""
    folder, _, _ = pope
    items = get_benchmark("pope").load_items(folder, splits="adversarial")
    image = "COCO_val2014_{:012d}.jpg"
    assert [i.meta for i in items] == [
        {"question_id": 1, "split": "adversarial", "label": "no", "image": image.format(0)},
        {"question_id": 2, "split": "adversarial", "label": "yes", "image": image.format(1)},
    ]


def test_assess_predictions():
    """assess: key "prediction" renamed; always yes / always no; "yes" or "no" changed."""
    assert get_benchmark("pope").assess([], ["Yes, a dog.", "No."], None) == [
        {"prediction": "yes"},
        {"prediction": "no"},
    ]


def test_score_reads_the_label_from_meta():
    """score: ``label == "yes"`` -> ``!= "yes"`` / ``== "XXyesXX"`` / ``== "YES"``. Answers yes, no, yes
    against labels yes, no, yes: tp 2, tn 1, accuracy 1."""
    records = [
        {"text": text, "meta": {"split": "random", "label": label}}
        for text, label in [("Yes", "yes"), ("No", "no"), ("Yes", "yes")]
    ]
    scores = get_benchmark("pope").score(records)
    assert (scores["random"]["tp"], scores["random"]["tn"], scores["random"]["accuracy"]) == (2, 1, 1.0)
