"""LLaVA-Bench: review parsing, the published reviews scored as LLaVA's summarize_gpt_review.py scores
them, ``smoothguard score llava-bench``, and a run reviewed by a real local OpenAI-compatible endpoint."""

import json

import pytest

from smoothguard.config import GuardConfig
from smoothguard.eval import (
    DataError,
    GuardSpec,
    OpenAIJudge,
    evaluate,
    parse_review_scores,
    score_llava_bench_reviews,
)
from smoothguard.eval.llava_bench import SYSTEM_PROMPT
from support.common import SHARED, needs_reference
from support.eval import make_llava_bench_folder, openai_endpoint

FIXTURES = SHARED / "fixtures" / "llava_bench"


needs_fixtures = needs_reference(FIXTURES, "the LLaVA-Bench review files of ../shared")


# Expected values: an independent re-implementation of LLaVA's llava/eval/summarize_gpt_review.py
# (written for this check, not part of the package) on the same files: per category and "all",
# mean of the review tuples (an unparseable review is stored as [-1, -1] and averaged in), relative
# score = 100 * mean(model) / mean(reference). Listed per group: (relative score, reference mean,
# model mean, n, unparseable). The script prints round(relative, 1), round(10 * mean, 1) after
# rounding the means to 3 decimals; PRINTED holds those lines, which our values reproduce.
PUBLISHED = {
    "Qwen2.5-reviews-new.jsonl": {
        "complex": (98.13953488372093, 7.678571428571429, 7.535714285714286, 28, 1),
        "conv": (102.23880597014924, 7.882352941176471, 8.058823529411764, 17, 0),
        "detail": (105.83333333333333, 8.0, 8.466666666666667, 15, 0),
        "all": (101.27931769722815, 7.816666666666666, 7.916666666666667, 60, 1),
    },
    "Qwen2.5-reviews-normal.jsonl": {
        "complex": (100.93457943925233, 7.642857142857143, 7.714285714285714, 28, 1),
        "conv": (102.22222222222221, 7.9411764705882355, 8.117647058823529, 17, 0),
        "detail": (110.81081081081079, 7.4, 8.2, 15, 1),
        "all": (103.69565217391303, 7.666666666666667, 7.95, 60, 2),
    },
    "llava-reviews-new.jsonl": {
        "complex": (99.76744186046511, 7.678571428571429, 7.660714285714286, 28, 1),
        "conv": (87.12121212121212, 7.764705882352941, 6.764705882352941, 17, 0),
        "detail": (89.16666666666667, 8.0, 7.133333333333334, 15, 0),
        "all": (93.46895074946467, 7.783333333333333, 7.275, 60, 1),
    },
    "llava-reviews-normal.jsonl": {
        "complex": (98.20627802690582, 7.964285714285714, 7.821428571428571, 28, 0),
        "conv": (91.66666666666666, 7.764705882352941, 7.117647058823529, 17, 0),
        "detail": (89.16666666666667, 8.0, 7.133333333333334, 15, 0),
        "all": (94.10526315789474, 7.916666666666667, 7.45, 60, 0),
    },
}


PRINTED = {
    "Qwen2.5-reviews-new.jsonl": "all 101.3 78.2 79.2",
    "Qwen2.5-reviews-normal.jsonl": "all 103.7 76.7 79.5",
    "llava-reviews-new.jsonl": "all 93.5 77.8 72.8",
    "llava-reviews-normal.jsonl": "all 94.1 79.2 74.5",
}


# The same script run with the unparseable reviews dropped (our --exclude-unparseable): the groups
# that change, as (relative score, n).
EXCLUDED = {
    "Qwen2.5-reviews-new.jsonl": {"complex": (98.14814814814815, 27), "all": (101.27659574468085, 59)},
    "Qwen2.5-reviews-normal.jsonl": {
        "complex": (100.93023255813952, 27),
        "detail": (110.71428571428572, 14),
        "all": (103.67965367965367, 58),
    },
    "llava-reviews-new.jsonl": {"complex": (99.76851851851852, 27), "all": (93.48290598290599, 59)},
    "llava-reviews-normal.jsonl": {},
}


@pytest.mark.parametrize(
    ("review", "scores"),
    [
        ("8 9\n\nExplanation: ...", (8.0, 9.0)),
        ("8,9\nbecause", (8.0, 9.0)),
        ("7.5 8", (7.5, 8.0)),
        ("8, 9", None),  # the reference splits on single spaces: "8  9" has three parts
        ("Assistant 1: 8 9", None),
        ("Assistant 1 Score: 8.5", None),
        ("", None),
    ],
)
def test_parse_review_scores_follows_llava(review, scores):
    assert parse_review_scores(review) == scores


@needs_fixtures
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_reviews_score_as_the_reference(name):
    scores = score_llava_bench_reviews(FIXTURES / "reviews" / name)
    assert list(scores) == ["complex", "conv", "detail", "all"]
    for group, (relative, reference, model, n, unparseable) in PUBLISHED[name].items():
        got = scores[group]
        assert got["relative_score"] == pytest.approx(relative, abs=1e-9)
        assert got["reference_mean"] == pytest.approx(reference, abs=1e-12)
        assert got["model_mean"] == pytest.approx(model, abs=1e-12)
        assert (got["n"], got["unparseable"]) == (n, unparseable)
    printed = f"all {scores['all']['relative_score']:.1f} {10 * scores['all']['reference_mean']:.1f} "
    assert printed + f"{10 * scores['all']['model_mean']:.1f}" == PRINTED[name]
    excluded = score_llava_bench_reviews(FIXTURES / "reviews" / name, exclude_unparseable=True)
    for group in scores:
        relative, n = EXCLUDED[name].get(group, (PUBLISHED[name][group][0], PUBLISHED[name][group][3]))
        assert excluded[group]["relative_score"] == pytest.approx(relative, abs=1e-9)
        assert excluded[group]["n"] == n
        assert excluded[group]["unparseable"] == scores[group]["unparseable"]


def test_review_file_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        score_llava_bench_reviews(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1}\n')
    with pytest.raises(DataError, match="line 1: neither content nor tuple"):
        score_llava_bench_reviews(bad)


RULE = {
    f"llava_bench_{c}": {"role": "Assistant", "prompt": f"Rate the {c} answers."} for c in ("conv", "detail", "complex")
}


def test_run_reviewed_by_a_local_openai_endpoint(tmp_path, tiny_llava, tiny_llava_dir, monkeypatch):
    folder = make_llava_bench_folder(tmp_path / "bench", RULE)
    monkeypatch.setenv("JUDGE_KEY", "sk-test")

    def reply(body):
        question = body["messages"][1]["content"]
        return "Assistant 1: 6" if "Why is it funny?" in question else "8 6\nAssistant 2 was vaguer."

    with openai_endpoint(reply) as endpoint:
        judge = OpenAIJudge(endpoint.url, "judge-model", key_env="JUDGE_KEY")
        spec = GuardSpec(model=str(tiny_llava_dir), guard=GuardConfig(num_copies=0))
        summary = evaluate(
            "llava-bench", spec, tmp_path / "run", data=folder, judge=judge, model=tiny_llava, max_new_tokens=3
        )
    headers, body = endpoint.requests[0]
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "judge-model" and body["temperature"] == 0.2 and body["max_tokens"] == 1024
    assert body["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    prompt = body["messages"][1]["content"]
    assert prompt.startswith("[Context]\nA red square.\n\n[Question]\nWhat is this?\n\n[Assistant 1]\nref 0\n\n")
    assert prompt.endswith("[System]\nRate the conv answers.\n\n")
    scores = summary["scores"]
    assert scores["conv"]["relative_score"] == pytest.approx(75.0)
    assert scores["complex"]["unparseable"] == 1 and scores["complex"]["reference_mean"] == -1.0
    assert scores["all"]["n"] == 3 and summary["judge"]["url"] == f"{endpoint.url}/chat/completions"
    assert "sk-test" not in (tmp_path / "run" / "summary.json").read_text()
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert records[0]["category"] == "llava_bench_conv" and records[0]["tuple"] == [8.0, 6.0]
    assert records[2]["tuple"] == [-1.0, -1.0] and records[0]["judge"]["name"] == "openai"
    # a run's records are a review file in LLaVA's format
    rescored = score_llava_bench_reviews(tmp_path / "run" / "records.jsonl", exclude_unparseable=True)
    assert rescored["all"]["n"] == 2 and rescored["all"]["relative_score"] == pytest.approx(75.0)


def test_run_without_judge_only_answers(tmp_path, tiny_llava, tiny_llava_dir):
    folder = make_llava_bench_folder(tmp_path / "bench", RULE)
    spec = GuardSpec(model=str(tiny_llava_dir), guard=GuardConfig(num_copies=0))
    summary = evaluate("llava-bench", spec, tmp_path / "run", data=folder, model=tiny_llava, max_new_tokens=2)
    assert summary["complete"] and summary["scores"] == {} and summary["judge"] is None
    (folder / "rule.json").unlink()
    with pytest.raises(DataError, match=r"rule\.json"):
        judge = OpenAIJudge("http://127.0.0.1:9/v1", "m", key_env=None)
        evaluate("llava-bench", spec, tmp_path / "run2", data=folder, judge=judge, model=tiny_llava)
