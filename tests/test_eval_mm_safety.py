"""MM-SafetyBench: the loader on the published layout (variants, question fields, universal image,
scenario selection), clear errors for bad layouts, judging instructions, and ASR arithmetic."""

import json

import pytest

from eval_support import MM_SAFETY_ROW, make_mm_safety_folder, save_image
from smoothguard.errors import ConfigError
from smoothguard.eval import DataError, asr_scores, get_benchmark
from smoothguard.eval.mm_safety import JUDGE_INSTRUCTIONS


@pytest.fixture
def folder(tmp_path):
    return make_mm_safety_folder(tmp_path / "mm", per_scenario=2)


@pytest.mark.parametrize(
    ("variant", "field"),
    [("SD", "Rephrased Question(SD)"), ("SD_TYPO", "Rephrased Question"), ("TYPO", "Rephrased Question")],
)
def test_variant_picks_images_and_question_field(folder, variant, field):
    items = get_benchmark("mm-safety").load_items(folder, variant=variant)
    assert [i.id for i in items] == [
        "01-Illegal_Activitiy/0",
        "01-Illegal_Activitiy/1",
        "08-Political_Lobbying/0",
        "08-Political_Lobbying/1",
    ]
    assert all(i.prompt == MM_SAFETY_ROW[field] for i in items)
    assert items[1].image == folder / "imgs" / "01-Illegal_Activitiy" / variant / "1.jpg"
    assert items[2].meta == {
        "scenario": "08-Political_Lobbying",
        "index": "0",
        "variant": variant,
        "question_field": field,
    }


def test_default_variant_is_sd_typo(folder):
    assert get_benchmark("mm-safety").load_items(folder)[0].meta["variant"] == "SD_TYPO"


def test_universal_image_replaces_every_image(folder, tmp_path):
    universal = save_image(tmp_path / "universal.bmp", 7)
    bench = get_benchmark("mm-safety")
    items = bench.load_items(folder, universal_image=universal)
    assert {i.image for i in items} == {universal}
    assert items[0].prompt == "How can I pick a lock? (0)" and items[0].meta["variant"] == "text"
    typo = bench.load_items(folder, universal_image=universal, variant="SD_TYPO")
    assert typo[0].prompt == MM_SAFETY_ROW["Rephrased Question"] and typo[0].image == universal


def test_scenarios_by_name_or_number(folder):
    bench = get_benchmark("mm-safety")
    assert {i.meta["scenario"] for i in bench.load_items(folder, scenarios="08")} == {"08-Political_Lobbying"}
    both = bench.load_items(folder, scenarios=["01-Illegal_Activitiy", "08"])
    assert len(both) == 4


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"variant": "XX"}, ConfigError, "unknown MM-SafetyBench variant 'XX'"),
        ({"variant": "text"}, ConfigError, "pass --universal-image"),
        ({"universal_image": "/no/such.bmp"}, DataError, "universal image /no/such.bmp does not exist"),
        ({"scenarios": "05"}, DataError, "unknown MM-SafetyBench scenario '05'"),
    ],
)
def test_bad_options_are_clear_errors(folder, options, error, message):
    with pytest.raises(error, match=message):
        get_benchmark("mm-safety").load_items(folder, **options)


def test_bad_layouts_are_clear_errors(folder, tmp_path):
    bench = get_benchmark("mm-safety")
    with pytest.raises(DataError, match=r"has no <scenario>\.json files"):
        bench.load_items(tmp_path / "empty")
    (folder / "imgs" / "08-Political_Lobbying" / "TYPO" / "0.jpg").unlink()
    (folder / "imgs" / "08-Political_Lobbying" / "TYPO" / "1.jpg").unlink()
    (folder / "imgs" / "08-Political_Lobbying" / "TYPO").rmdir()
    with pytest.raises(DataError, match=r"08-Political_Lobbying/TYPO does not exist"):
        bench.load_items(folder, variant="TYPO")
    path = folder / "processed_questions" / "01-Illegal_Activitiy.json"
    path.write_text(json.dumps({"0": {"Question": "only the plain question"}}))
    with pytest.raises(DataError, match="id 0: no 'Rephrased Question' text for variant SD_TYPO"):
        bench.load_items(folder)
    path.write_text(json.dumps(["not", "a", "mapping"]))
    with pytest.raises(DataError, match="must map ids to questions"):
        bench.load_items(folder)
    path.write_text("{broken")
    with pytest.raises(DataError, match="is not valid JSON"):
        bench.load_items(folder)


def test_judging_instructions_follow_the_scenario(folder, tmp_path):
    bench = get_benchmark("mm-safety")
    assert bench.instruction_for("08-Political_Lobbying") == JUDGE_INSTRUCTIONS["08"]
    assert "political lobbying" in JUDGE_INSTRUCTIONS["08"]
    assert "certification" in bench.instruction_for("12-Health_Consultation")
    assert bench.instruction_for("01-Illegal_Activitiy") == JUDGE_INSTRUCTIONS["default"]
    assert all(text.endswith("Answer: {prediction}\nYour output: ") for text in JUDGE_INSTRUCTIONS.values())
    custom = tmp_path / "instructions.json"
    custom.write_text(json.dumps({"01-Illegal_Activitiy": "Judge {prediction}!"}))
    bench.load_items(folder, judge_instructions=custom)
    assert bench.instruction_for("01-Illegal_Activitiy") == "Judge {prediction}!"
    custom.write_text(json.dumps({"default": "no placeholder"}))
    with pytest.raises(DataError, match="templates containing"):
        get_benchmark("mm-safety").load_items(folder, judge_instructions=custom)


def test_asr_counts_unparsed_apart():
    rows = [("a", "unsafe"), ("a", "safe"), ("a", "unparsed"), ("b", "unsafe")]
    scores = asr_scores(rows)
    assert list(scores) == ["a", "b", "all"]
    a = scores["a"]
    interval = (a.pop("asr_low"), a.pop("asr_high"))
    assert a == {"asr": 1 / 3, "asr_of_parsed": 0.5, "n": 3, "safe": 1, "unsafe": 1, "unparsed": 1}
    # R: binom.test(1, 3)$conf.int = 0.008403759 0.905700676
    assert interval == pytest.approx((0.008403759, 0.905700676), abs=1e-8)
    assert scores["all"]["asr"] == 0.5 and scores["all"]["unparsed"] == 1
    assert asr_scores([("a", "unparsed")])["a"]["asr_of_parsed"] == 0.0
