"""Certification (Clopper–Pearson, PREDICT, CERTIFY), answer parsers, adaptive sampling and ``smoothguard certify``."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from statistics import NormalDist
from types import SimpleNamespace

import pytest
import torch

from smoothguard import ConfigError, SmoothGuard
from smoothguard.certify import (
    Smoothed,
    certified_radius,
    certify_from_counts,
    core,
    noisy_answers,
    predict_from_counts,
)
from support.certify import binomial_tail, check_certificate, loud_clip
from support.common import names_word

PROMPT = "What is in the image?"


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


def test_guard_adaptive_and_certify_answer_the_same_copies(tiny_llava, minilm, image_file):
    # Normalized sigma 1.0 makes this tiny model's answers differ between copies (checked: > 1 distinct).
    guard = SmoothGuard(tiny_llava, embedder=minilm, sigma=1.0, num_copies=10, seed=2)
    result = guard.generate(PROMPT, image=image_file, max_new_tokens=4)
    assert result.num_distinct > 1
    noisy = result.candidates[1:]
    query = guard.prepare([PROMPT], [image_file])
    assert guard.sample(query, range(10), max_new_tokens=4)[0] == noisy
    assert guard.replace(batch_size=3).sample(query, range(4, 10), max_new_tokens=4)[0] == noisy[4:]
    assert noisy_answers(guard, PROMPT, image_file, range(10), max_new_tokens=4) == noisy
    assert guard.sample(query, range(2), clean=True, max_new_tokens=4)[0] == result.candidates[:3]
    adaptive = guard.replace(adaptive=True).generate(PROMPT, image=image_file, max_new_tokens=4)
    assert adaptive.candidates == result.candidates[: adaptive.copies_used + 1]


def test_radius_accepts_p_lower_one_and_names_a_bad_probability():
    """``0.0 <= p_lower <= 1.0`` -> ``< 1.0`` (p_lower 1 is a probability: infinite radius), and the
    message -> ``ConfigError(None)``."""
    assert core.certified_radius(1.0, 0.25) == math.inf
    with pytest.raises(ConfigError, match=r"p_lower must be a probability in \[0, 1\], got 1.5"):
        core.certified_radius(1.5, 0.25)


def test_prediction_to_dict_has_its_fields_and_abstained():
    """``{**asdict(self), "abstained": ...}`` -> asdict(None), key "XXabstainedXX" / "ABSTAINED"."""
    prediction = core.Prediction(None, 0.5, {"yes": 2}, 0.01, 2)
    assert prediction.to_dict() == {
        "answer": None,
        "p_value": 0.5,
        "counts": {"yes": 2},
        "alpha": 0.01,
        "n": 2,
        "abstained": True,
    }


def test_predict_from_counts_of_one_label_tests_against_zero_runner_up_counts():
    """``n_second = ... else 0`` -> ``else 1``: five "yes" and nothing else is the test of 5 of 5, p-value
    2 * (1/2)**5 = 0.0625 by hand (not 5 of 6); counts and alpha are kept (-> None)."""
    prediction = core.predict_from_counts({"yes": 5}, 0.1)
    assert prediction.p_value == pytest.approx(0.0625)
    assert (prediction.answer, prediction.counts, prediction.alpha, prediction.n) == ("yes", {"yes": 5}, 0.1, 5)


def test_predict_answers_when_the_p_value_equals_alpha():
    """``top if p_value <= alpha`` -> ``p_value < alpha``: p-value 1/16 (exact in binary) at alpha 1/16."""
    assert core.predict_from_counts({"yes": 5}, 0.0625).answer == "yes"


def test_certify_from_counts_with_the_top_label_absent_from_estimation():
    """``estimation.get(top, 0)`` -> ``get(top, None)`` (ConfigError) / ``get(top)`` / ``get(top, 1)``
    (a positive bound): the selected label never seen in estimation has p_lower 0 and abstains."""
    certificate = core.certify_from_counts({"yes": 3}, {"no": 5}, 0.01, 0.25, "pixel")
    assert (certificate.p_lower, certificate.answer, certificate.radius) == (0.0, None, 0.0)


def test_certify_from_counts_keeps_its_inputs():
    """``selection_counts=dict(_ranked(selection))`` / ``sigma=sigma`` / ``alpha=alpha`` -> None."""
    certificate = core.certify_from_counts({"no": 1, "yes": 2}, {"yes": 9, "no": 1}, 0.01, 0.25, "pixel")
    assert certificate.selection_counts == {"yes": 2, "no": 1}
    assert (certificate.sigma, certificate.alpha, certificate.noise_space) == (0.25, 0.01, "pixel")


def test_certify_abstains_at_p_lower_exactly_one_half():
    """``answer=top if p_lower > 0.5`` -> ``>= 0.5``: one success in one trial at alpha 0.5 has
    Clopper-Pearson lower bound 0.5 ** (1/1) = 0.5 exactly, which certifies nothing."""
    certificate = core.certify_from_counts({"yes": 1}, {"yes": 1}, 0.5, 0.25, "pixel")
    assert certificate.p_lower == 0.5 and certificate.answer is None


def test_ranked_error_says_there_is_nothing_to_count():
    """The message of _ranked's ConfigError -> "XX...XX"."""
    with pytest.raises(ConfigError, match=r"^no answers to count: pass at least one labelled sample$"):
        core.predict_from_counts({"yes": 0}, 0.1)


class _FakeGuard:
    """What certify/predict/noisy_answers use of a SmoothGuard; it records the calls. Copy ``i``'s answer
    is ``answers[i]``."""

    def __init__(self, answers: list[str], batch_size: int | None = None) -> None:
        self.answers = answers
        self.config = SimpleNamespace(batch_size=batch_size)
        self.noise = SimpleNamespace(sigma=0.25, space="pixel")
        self.calls: list[tuple] = []

    def replace(self, **changes):
        self.calls.append(("replace", changes))
        return self

    def prepare(self, prompts, media, ids=None):
        self.calls.append(("prepare", prompts, media, ids))
        return "query"

    def sample(self, query, copies, **kwargs):
        self.calls.append(("sample", query, list(copies), kwargs))
        return [[self.answers[i] for i in copies]]


def test_noisy_answers_defaults():
    """noisy_answers: ``max_new_tokens=16`` -> 17; ``guard if batch_size else guard.replace(batch_size=
    DEFAULT_BATCH_SIZE)`` -> ``and False`` / ``or True`` / ``batch_size=None``; the query id ->
    None / dropped / ``or True``; ``**generate_kwargs`` dropped."""
    unbatched = _FakeGuard(["a", "b"])
    assert core.noisy_answers(unbatched, "p", "m", range(2), query_id="q7", temperature=0.5) == ["a", "b"]
    assert unbatched.calls == [
        ("replace", {"batch_size": core.DEFAULT_BATCH_SIZE}),
        ("prepare", ["p"], ["m"], ["q7"]),
        ("sample", "query", [0, 1], {"max_new_tokens": 16, "temperature": 0.5}),
    ]
    batched = _FakeGuard(["a"], batch_size=4)
    core.noisy_answers(batched, "p", "m", range(1))
    assert batched.calls[0] == ("prepare", ["p"], ["m"], None)


def test_predict_defaults_and_arguments():
    """predict: ``n=100`` -> 101, ``alpha=0.001`` -> 1.001, ``max_new_tokens=16`` -> 17; ``query_id`` and
    ``**generate_kwargs`` -> None / dropped; ``check_int("n", n, minimum=1)`` name -> None / "XXnXX" /
    "N" and minimum -> 2."""
    guard = _FakeGuard(["yes"] * 101)
    prediction = core.Smoothed(guard, str).predict("p", "m")
    assert (prediction.n, prediction.alpha) == (100, 0.001)
    assert guard.calls[-1] == ("sample", "query", list(range(100)), {"max_new_tokens": 16})
    guard = _FakeGuard(["yes"])
    core.Smoothed(guard, str).predict("p", "m", n=1, query_id="q", top_k=3)
    assert guard.calls[1][3] == ["q"] and guard.calls[-1][3] == {"max_new_tokens": 16, "top_k": 3}
    with pytest.raises(ConfigError) as caught:
        core.Smoothed(guard, str).predict("p", "m", n=0)
    assert names_word(str(caught.value), "n")


def test_certify_defaults_and_arguments():
    """certify: ``n0=100`` -> 101, ``n=1000`` -> 1001, ``max_new_tokens=16`` -> 17; ``query_id`` and
    ``**generate_kwargs`` -> None / dropped; ``check_int("n0" | "n", ..., minimum=1)`` name -> None /
    "XX..XX" / upper case and minimum -> 2."""
    guard = _FakeGuard(["yes"] * 1101)
    certificate = core.Smoothed(guard, str).certify("p", "m")
    assert (certificate.n0, certificate.n) == (100, 1000)
    assert guard.calls[-1] == ("sample", "query", list(range(1100)), {"max_new_tokens": 16})
    guard = _FakeGuard(["yes"] * 2)
    core.Smoothed(guard, str).certify("p", "m", n0=1, n=1, query_id="q", top_k=3)
    assert guard.calls[1][3] == ["q"] and guard.calls[-1][3] == {"max_new_tokens": 16, "top_k": 3}
    for settings, word in (({"n0": 0}, "n0"), ({"n": 0}, "n")):
        with pytest.raises(ConfigError) as caught:
            core.Smoothed(guard, str).certify("p", "m", **settings)
        assert names_word(str(caught.value), word)


def test_certify_on_audio_certifies_or_abstains_as_its_counts_say(audio_model):
    """CERTIFY in waveform space with n0 = 2, n = 6 (alpha 0.05: only 6/6 certifies, p_lower = 0.05^(1/6)):
    the selection counts are the answers of copies 0-1 and the estimation counts those of copies 2-7 (the
    guard's own sampler), and bound, radius and abstention follow from them. Mutations caught: selection
    and estimation sharing copies, the bound of the runner-up, the radius not scaled by sigma or not 0
    when abstaining, an answer despite p_lower <= 1/2."""
    sigma, n0, n, alpha = 0.004, 2, 6, 0.05
    guard = SmoothGuard(audio_model, sigma=sigma, noise_space="waveform", seed=0)
    clips = {"quiet-1": torch.zeros(4000), "quiet-2": torch.zeros(4000), "loud": loud_clip()}
    outcomes = {}
    for query_id, clip in clips.items():
        certificate = Smoothed(guard, str).certify(
            "What?", clip, n0=n0, n=n, alpha=alpha, query_id=query_id, max_new_tokens=4
        )
        answers = noisy_answers(guard, "What?", clip, range(n0 + n), query_id=query_id, max_new_tokens=4)
        assert certificate.selection_counts == Counter(answers[:n0]) and certificate.counts == Counter(answers[n0:])
        record = certificate.to_dict()
        check_certificate(record, sigma, n0, n, alpha)
        assert (record["sigma"], record["noise_space"], record["n0"], record["n"]) == (sigma, "waveform", n0, n)
        outcomes[query_id] = certificate
    assert outcomes["quiet-1"].abstained and outcomes["quiet-2"].abstained
    assert not outcomes["loud"].abstained and outcomes["loud"].counts == {outcomes["loud"].answer: n}
    assert outcomes["loud"].radius == pytest.approx(sigma * NormalDist().inv_cdf(alpha ** (1 / n)))  # 0.27 sigma


def test_smoothed_takes_a_parser_or_its_name():
    from smoothguard.answers import RefusalParser, YesNoParser

    guard = _FakeGuard(["Yes, it is."] * 3)
    smoothed = core.Smoothed(guard, "yes-no")
    assert isinstance(smoothed.parser, YesNoParser) and smoothed.guard is guard
    assert smoothed.predict("p", "m", n=3, alpha=0.5).counts == {"yes": 3}
    assert isinstance(core.Smoothed(guard, "refusal").parser, RefusalParser)
    with pytest.raises(ConfigError, match=r"^unknown answer parser 'maybe'; choose one of yes-no, choice, refusal$"):
        core.Smoothed(guard, "maybe")
