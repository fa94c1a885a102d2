"""POPE (Li et al. 2023, object hallucination) in LLaVA's evaluation format, scored as LLaVA's
``llava/eval/eval_pope.py`` scores it.

Layout of ``--data DIR`` (LLaVA's ``playground/data/eval/pope``)::

    DIR/llava_pope_test.jsonl           questions: question_id, image, text, category (= split)
    DIR/coco/coco_pope_<split>.json     labels, one JSON object a line: question_id (1.. per split),
                                        image, text, label (yes/no); same order as the questions
    DIR/val2014/COCO_val2014_*.jpg      the COCO images (yours)

Answers join questions by ``question_id``; questions join labels in order within their split, checked
by image name and question text. A missing, duplicated or mismatched item is a ``DataError``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from smoothguard.answers import parse_yes_no
from smoothguard.errors import DataError
from smoothguard.eval.base import Benchmark, EvalItem, Scores, option
from smoothguard.eval.judges import Judge
from smoothguard.records import read_jsonl, require

LABEL_PREFIX = "coco_pope_"
_RATES = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def pope_metrics(predictions: Sequence[bool], labels: Sequence[bool]) -> dict[str, Any]:
    """Binary metrics with yes (``True``) as the positive class, as LLaVA's scorer computes them.

    Returns ``accuracy``, ``precision``, ``recall``, ``f1``, ``yes_ratio`` (fractions in [0, 1]; 0.0
    where a denominator is 0, scikit-learn's ``zero_division=0``), counts ``tp``, ``fp``, ``tn``,
    ``fn`` and ``n``.
    """
    if len(predictions) != len(labels):
        raise DataError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise DataError("no predictions to score")
    tp = sum(p and y for p, y in zip(predictions, labels, strict=True))
    fp = sum(p and not y for p, y in zip(predictions, labels, strict=True))
    fn = sum(not p and y for p, y in zip(predictions, labels, strict=True))
    n = len(labels)
    tn = n - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": n,
    }


def pope_scores(rows: Iterable[tuple[str, bool, bool]]) -> Scores:
    """``(split, predicted yes, label yes)`` rows -> metrics per split, plus ``mean``: the unweighted
    mean of each rate over the splits (LLaVA-1.5's headline POPE number is the mean F1)."""
    by_split: dict[str, tuple[list[bool], list[bool]]] = defaultdict(lambda: ([], []))
    for split, predicted, label in rows:
        by_split[split][0].append(predicted)
        by_split[split][1].append(label)
    splits: Scores = {split: pope_metrics(*by_split[split]) for split in sorted(by_split)}
    if not splits:
        return {}
    mean: dict[str, Any] = {rate: sum(s[rate] for s in splits.values()) / len(splits) for rate in _RATES}
    mean["n"] = sum(s["n"] for s in splits.values())
    return {**splits, "mean": mean}


@dataclass(frozen=True)
class PopeQuestion:
    """One POPE question joined with its label. ``text`` is the full prompt of the question file."""

    question_id: int
    split: str
    image: str
    text: str
    label: bool


def load_pope(questions: str | Path, labels_dir: str | Path) -> list[PopeQuestion]:
    """Questions (LLaVA format) joined with the COCO label files of ``labels_dir``, in question order."""
    labels_dir = Path(labels_dir)
    rows = read_jsonl(questions, "POPE question file")
    if not labels_dir.is_dir():
        raise DataError(f"POPE label folder {labels_dir} does not exist (it holds coco_pope_<split>.json)")
    label_files = {p.stem[len(LABEL_PREFIX) :]: p for p in sorted(labels_dir.glob(f"{LABEL_PREFIX}*.json"))}
    if not label_files:
        raise DataError(f"POPE label folder {labels_dir} has no {LABEL_PREFIX}<split>.json files")
    by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
    seen: set[Any] = set()
    for number, row in enumerate(rows, 1):
        require(row, ("question_id", "image", "text", "category"), f"POPE question file {questions}, line {number}")
        if row["question_id"] in seen:
            raise DataError(f"POPE question file {questions}: question_id {row['question_id']} appears twice")
        seen.add(row["question_id"])
        by_split[row["category"]].append(row)
    for split in sorted(set(by_split) | set(label_files)):
        if split not in label_files:
            raise DataError(
                f"POPE split {split!r} has questions but no label file {labels_dir / (LABEL_PREFIX + split)}.json"
            )
        if split not in by_split:
            raise DataError(f"POPE label file {label_files[split]} has no questions of category {split!r}")
    joined: dict[Any, PopeQuestion] = {}
    for split, split_rows in by_split.items():
        for question, label in _join_split(split, split_rows, label_files[split]):
            joined[question["question_id"]] = PopeQuestion(
                question["question_id"], split, question["image"], question["text"], label
            )
    return [joined[row["question_id"]] for row in rows]


def _join_split(split: str, questions: list[dict[str, Any]], label_file: Path) -> Iterable[tuple[dict[str, Any], bool]]:
    labels = read_jsonl(label_file, "POPE label file")
    if len(labels) != len(questions):
        raise DataError(f"POPE split {split!r}: {len(questions)} questions but {len(labels)} labels in {label_file}")
    for position, (question, label) in enumerate(zip(questions, labels, strict=True), 1):
        where = f"POPE label file {label_file}, line {position}"
        require(label, ("question_id", "image", "text", "label"), where)
        if label["question_id"] != position:
            raise DataError(
                f"{where}: question_id {label['question_id']}, expected {position} (missing or duplicated label)"
            )
        if label["label"] not in ("yes", "no"):
            raise DataError(f"{where}: label must be yes or no, got {label['label']!r}")
        asked = str(question["text"]).split("\n")[0].strip()
        if question["image"] != label["image"] or asked != str(label["text"]).strip():
            raise DataError(
                f"POPE split {split!r}: question {question['question_id']} ({question['image']}, {asked!r}) does not "
                f"match label {position} ({label['image']}, {label['text']!r}); the files are out of step"
            )
        yield question, label["label"] == "yes"


def score_pope_answers(
    answers: str | Path | Sequence[dict[str, Any]], questions: str | Path, labels_dir: str | Path
) -> Scores:
    """Score a LLaVA-format answer file (``question_id``, ``text``; ours or anyone's) per split.

    Every question needs exactly one answer; an answer's ``prompt``, where present, must match its
    question's first line.
    """
    source = answers if isinstance(answers, (str, Path)) else "answers"
    rows = read_jsonl(answers, "POPE answer file") if isinstance(answers, (str, Path)) else list(answers)
    by_id = {q.question_id: q for q in load_pope(questions, labels_dir)}
    answered: dict[Any, bool] = {}
    for number, row in enumerate(rows, 1):
        where = f"POPE answer file {source}, line {number}"
        require(row, ("question_id", "text"), where)
        question = by_id.get(row["question_id"])
        if question is None:
            raise DataError(f"{where}: question_id {row['question_id']} is not in the question file {questions}")
        if row["question_id"] in answered:
            raise DataError(f"{where}: question_id {row['question_id']} is answered twice")
        if "prompt" in row and str(row["prompt"]).split("\n")[0].strip() != question.text.split("\n")[0].strip():
            raise DataError(f"{where}: prompt {row['prompt']!r} is not question {question.question_id}'s")
        answered[row["question_id"]] = parse_yes_no(str(row["text"]))
    missing = [qid for qid in by_id if qid not in answered]
    if missing:
        raise DataError(
            f"POPE answer file {source} lacks {len(missing)} of {len(by_id)} answers "
            f"(first missing question_id: {missing[0]}); score complete answer files only"
        )
    return pope_scores((by_id[qid].split, yes, by_id[qid].label) for qid, yes in answered.items())


def _names(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    return [n for n in names if n]


@dataclass(frozen=True)
class PopeOptions:
    """What overrides LLaVA's layout (paths: str or Path; ``splits``: comma-separated or a list)."""

    questions: str | Path | None = option("question file (default DIR/llava_pope_test.jsonl)", Path)
    labels: str | Path | None = option("label folder with coco_pope_<split>.json (default DIR/coco)", Path)
    images: str | Path | None = option("image folder (default DIR/val2014)", Path)
    splits: str | Sequence[str] | None = option("splits to run, comma-separated (default all)")


class PopeBenchmark(Benchmark):
    """POPE on COCO val2014 (``--data DIR`` in LLaVA's layout, see the module docstring)."""

    name = "pope"
    max_new_tokens = 128
    kind = "utility"
    headline = ("mean.f1", "mean.accuracy")
    Options = PopeOptions

    def load_items(self, data_dir: Path | None, **options: Any) -> list[EvalItem]:
        """The questions of ``data_dir`` (LLaVA's layout) as :class:`PopeOptions` override it."""
        questions, labels, images, splits = astuple(self.parse_options(options))
        root = Path(data_dir) if data_dir is not None else Path()
        image_dir = Path(images) if images else root / "val2014"
        if not image_dir.is_dir():
            raise DataError(
                f"POPE image folder {image_dir} does not exist: put COCO val2014 there or pass --images DIR"
            )
        joined = load_pope(questions or root / "llava_pope_test.jsonl", labels or root / "coco")
        wanted = _names(splits)
        if wanted is not None:
            unknown = sorted(set(wanted) - {q.split for q in joined})
            if unknown:
                present = ", ".join(sorted({q.split for q in joined}))
                raise DataError(f"unknown POPE split(s) {', '.join(unknown)}; the question file has {present}")
            joined = [q for q in joined if q.split in wanted]
        return [
            EvalItem(
                id=str(q.question_id),
                prompt=q.text,
                image=image_dir / q.image,
                meta={
                    "question_id": q.question_id,
                    "split": q.split,
                    "label": "yes" if q.label else "no",
                    "image": q.image,
                },
            )
            for q in joined
        ]

    def assess(self, items: Sequence[EvalItem], answers: Sequence[str], judge: Judge | None) -> list[dict[str, Any]]:
        return [{"prediction": "yes" if parse_yes_no(answer) else "no"} for answer in answers]

    def score(self, records: Sequence[dict[str, Any]]) -> Scores:
        return pope_scores((r["meta"]["split"], parse_yes_no(r["text"]), r["meta"]["label"] == "yes") for r in records)
