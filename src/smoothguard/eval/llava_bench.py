"""LLaVA-Bench (In-the-Wild): answers reviewed by an OpenAI-compatible judge against reference answers,
scored as LLaVA's ``llava/eval/summarize_gpt_review.py`` scores them.

Layout of ``--data DIR`` (LLaVA's ``playground/data/eval/llava-bench-in-the-wild`` plus ``rule.json``
from ``llava/eval/table``)::

    DIR/questions.jsonl        question_id, image, text, category (conv / detail / complex)
    DIR/context.jsonl          image, caption (the judge's description of the image)
    DIR/answers_gpt4.jsonl     reference answers (or DIR/answers/answers_gpt4.jsonl)
    DIR/rule.json              judge prompts per category (llava_bench_<category>)
    DIR/images/<image>         the 24 images

A review's first line holds two scores, reference (assistant 1) then model (assistant 2).
Relative score = 100 * mean(model) / mean(reference), per category and over all reviews. An
unparseable review counts as -1/-1, as the reference scorer does, unless ``exclude_unparseable``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from smoothguard.errors import ConfigError, DataError
from smoothguard.eval.base import Benchmark, EvalItem, Scores, option
from smoothguard.eval.judges import Judge, OpenAIJudge
from smoothguard.records import read_json, read_jsonl, require

CATEGORY_PREFIX = "llava_bench_"
SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."
#: The reference review settings (LLaVA's eval_gpt_review_bench.py).
REVIEW_TEMPERATURE = 0.2
REVIEW_MAX_TOKENS = 1024
UNPARSEABLE = (-1.0, -1.0)


def parse_review_scores(review: str) -> tuple[float, float] | None:
    """The (reference, model) scores on a review's first line, parsed as LLaVA's ``parse_score`` does:
    commas become spaces, the line must split on single spaces into exactly two numbers. ``None`` if not."""
    parts = review.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


def review_scores(review: dict[str, Any]) -> tuple[float, float] | None:
    """Scores of one review record: parsed from ``content`` when present, else its ``tuple``."""
    if "content" in review:
        return parse_review_scores(str(review["content"]))
    pair = tuple(float(x) for x in review["tuple"])
    return None if pair == UNPARSEABLE else (pair[0], pair[1])


def llava_bench_scores(reviews: Iterable[dict[str, Any]], *, exclude_unparseable: bool = False) -> Scores:
    """Per category (``llava_bench_`` prefix dropped) and ``all``: ``relative_score`` (percent),
    ``reference_mean`` and ``model_mean`` (judge scale 1-10), ``n`` (reviews averaged) and
    ``unparseable`` (reviews whose scores could not be read)."""
    pairs: dict[str, list[tuple[float, float]]] = {}
    unparseable: dict[str, int] = defaultdict(int)
    for review in reviews:
        groups = ["all"]
        if review.get("category"):
            groups.insert(0, str(review["category"]).removeprefix(CATEGORY_PREFIX))
        scores = review_scores(review)
        for group in groups:
            bucket = pairs.setdefault(group, [])
            if scores is None:
                unparseable[group] += 1
                if exclude_unparseable:
                    continue
            bucket.append(scores or UNPARSEABLE)
    table: Scores = {}
    for group in sorted(pairs, key=lambda g: (g == "all", g)):
        rows = pairs[group]
        reference = sum(r for r, _ in rows) / len(rows) if rows else 0.0
        model = sum(m for _, m in rows) / len(rows) if rows else 0.0
        table[group] = {
            "relative_score": 100 * model / reference if reference else None,
            "reference_mean": reference,
            "model_mean": model,
            "n": len(rows),
            "unparseable": unparseable[group],
        }
    return table


def score_llava_bench_reviews(path: str | Path, *, exclude_unparseable: bool = False) -> Scores:
    """Score a review file (LLaVA's format: ``category``, ``content`` and/or ``tuple`` per line)."""
    reviews = read_jsonl(path, "LLaVA-Bench review file")
    for number, review in enumerate(reviews, 1):
        if "content" not in review and "tuple" not in review:
            raise DataError(f"LLaVA-Bench review file {path}, line {number}: neither content nor tuple")
    if not reviews:
        raise DataError(f"LLaVA-Bench review file {path} is empty")
    return llava_bench_scores(reviews, exclude_unparseable=exclude_unparseable)


def review_prompt(caption: str, question: str, reference: str, answer: str, rule: dict[str, str]) -> str:
    """The judge's user message in LLaVA's layout: context, question, assistant 1 (the reference),
    assistant 2 (the model), then the category's instruction."""
    role = rule["role"]
    return (
        f"[Context]\n{caption}\n\n[Question]\n{question}\n\n"
        f"[{role} 1]\n{reference}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n"
        f"[System]\n{rule['prompt']}\n\n"
    )


@dataclass(frozen=True)
class LlavaBenchOptions:
    """What overrides LLaVA's layout."""

    images: str | Path | None = option("image folder (default DIR/images)", Path)
    reference: str | Path | None = option("reference answers (default DIR/answers_gpt4.jsonl)", Path)
    rule: str | Path | None = option("LLaVA's rule.json with the review prompts (default DIR/rule.json)", Path)


class LlavaBenchmark(Benchmark):
    """LLaVA-Bench (In-the-Wild) (see the module docstring). Without a judge the run only answers;
    with ``--judge openai`` every answer is reviewed against the reference answer."""

    name = "llava-bench"
    max_new_tokens = 256
    kind = "utility"
    headline = ("all.relative_score",)
    judges = ("openai",)
    Options = LlavaBenchOptions

    def __init__(self) -> None:
        self.captions: dict[str, str] = {}
        self.references: dict[Any, str] = {}
        self.rules: dict[str, dict[str, str]] = {}

    def load_items(self, data_dir: Path | None, **options: Any) -> list[EvalItem]:
        """The questions of ``data_dir`` (LLaVA's layout) as :class:`LlavaBenchOptions` override it."""
        images, reference, rule = astuple(self.parse_options(options))
        root = Path(data_dir) if data_dir is not None else Path()
        image_dir = Path(images) if images else root / "images"
        if not image_dir.is_dir():
            raise DataError(
                f"LLaVA-Bench image folder {image_dir} does not exist: put the images there or pass --images"
            )
        questions = read_jsonl(root / "questions.jsonl", "LLaVA-Bench question file")
        self.captions = self._captions(root / "context.jsonl")
        reference_file = (
            Path(reference)
            if reference
            else _first_file(root / "answers_gpt4.jsonl", root / "answers" / "answers_gpt4.jsonl")
        )
        self.references = self._references(reference_file) if reference_file else {}
        rule_file = Path(rule) if rule else root / "rule.json"
        self.rules = read_json(rule_file, "LLaVA-Bench rule file") if rule or rule_file.is_file() else {}
        if not isinstance(self.rules, dict):
            raise DataError(f"LLaVA-Bench rule file {rule_file} must map categories to {{role, prompt}}")
        items, seen = [], set()
        for number, row in enumerate(questions, 1):
            where = f"LLaVA-Bench question file {root / 'questions.jsonl'}, line {number}"
            require(row, ("question_id", "image", "text", "category"), where)
            if row["question_id"] in seen:
                raise DataError(f"{where}: question_id {row['question_id']} appears twice")
            seen.add(row["question_id"])
            if row["image"] not in self.captions:
                raise DataError(f"{where}: image {row['image']} has no caption in context.jsonl")
            meta = {"question_id": row["question_id"], "category": row["category"], "image": row["image"]}
            items.append(EvalItem(str(row["question_id"]), row["text"], image_dir / row["image"], meta))
        return items

    def check_judge(self, judge: Judge | None) -> None:
        super().check_judge(judge)
        if judge is None:
            return
        if not isinstance(judge, OpenAIJudge):
            raise ConfigError(f"{self.name} reviews need the openai judge, not {judge.name}")
        if not self.references or not self.rules:
            raise DataError(
                f"{self.name} reviews need the reference answers (answers_gpt4.jsonl) and LLaVA's rule.json "
                "in the data folder, or --reference FILE and --rule FILE"
            )

    def assess(self, items: Sequence[EvalItem], answers: Sequence[str], judge: Judge | None) -> list[dict[str, Any]]:
        self.check_judge(judge)
        if not isinstance(judge, OpenAIJudge):
            return [{} for _ in items]
        return [self._review(item, answer, judge) for item, answer in zip(items, answers, strict=True)]

    def score(self, records: Sequence[dict[str, Any]]) -> Scores:
        reviewed = [r for r in records if "content" in r]
        return llava_bench_scores(reviewed) if reviewed else {}

    def _review(self, item: EvalItem, answer: str, judge: OpenAIJudge) -> dict[str, Any]:
        category = CATEGORY_PREFIX + item.meta["category"]
        rule = self.rules.get(category)
        if not isinstance(rule, dict) or not {"role", "prompt"} <= set(rule):
            raise DataError(f"rule file has no {category!r} entry with role and prompt (question {item.id})")
        if item.meta["question_id"] not in self.references:
            raise DataError(f"no reference answer for question {item.id}")
        prompt = review_prompt(
            self.captions[item.meta["image"]],
            item.prompt,
            self.references[item.meta["question_id"]],
            answer,
            rule,
        )
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        content = judge.chat(messages, temperature=REVIEW_TEMPERATURE, max_tokens=REVIEW_MAX_TOKENS)
        return {"category": category, "content": content, "tuple": list(parse_review_scores(content) or UNPARSEABLE)}

    @staticmethod
    def _captions(path: Path) -> dict[str, str]:
        captions = {}
        for number, row in enumerate(read_jsonl(path, "LLaVA-Bench context file"), 1):
            require(row, ("image", "caption"), f"LLaVA-Bench context file {path}, line {number}")
            caption = row["caption"]
            captions[row["image"]] = "\n".join(caption) if isinstance(caption, list) else str(caption)
        return captions

    @staticmethod
    def _references(path: Path) -> dict[Any, str]:
        rows = read_jsonl(path, "LLaVA-Bench reference answer file")
        for number, row in enumerate(rows, 1):
            require(row, ("question_id", "text"), f"LLaVA-Bench reference answer file {path}, line {number}")
        return {row["question_id"]: row["text"] for row in rows}


def _first_file(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)
