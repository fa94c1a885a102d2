"""Tests that kill mutants the module test files let survive (``mutmut run``, README "Mutation testing").

One test per hole; each docstring names the mutation it catches. Fast: no models, no servers."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from smoothguard import noise, stats
from smoothguard.certify import core
from smoothguard.cluster import _cosine_rows, aggregate
from smoothguard.config import GuardConfig
from smoothguard.errors import ConfigError
from smoothguard.noise import GaussianNoise, content_key, copy_seed, query_seed, validate_sigma


def _names(message: str, word: str) -> bool:
    """``word`` appears in ``message`` as a word of its own, in that case (not inside ``XXwordXX``)."""
    return re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", message) is not None


class _FakeAdapter:
    """The three adapter members ``GaussianNoise.copies`` uses; it records what it preprocesses."""

    normalized_key = "pixel_values"

    def __init__(self) -> None:
        self.batches: list[tuple[int, ...]] = []

    def preprocess(self, media: torch.Tensor) -> dict[str, torch.Tensor]:
        self.batches.append(tuple(media.shape))
        return {"pixel_values": media * 2.0, "mask": torch.ones(1)}

    def split_media(self, inputs: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
        return [{"pixel_values": inputs["pixel_values"][i]} for i in range(n)]


# --- noise.py -------------------------------------------------------------------------------------------


def test_validate_sigma_refuses_a_string_with_config_error():
    """``isinstance(sigma, bool) or not isinstance(...)`` -> ``and``: a string sigma reaches math.isfinite
    (TypeError) instead of ConfigError."""
    with pytest.raises(ConfigError, match="finite number"):
        validate_sigma("0.1")


@pytest.mark.parametrize("call", [lambda: query_seed(-1, "k"), lambda: copy_seed(-1, 0)])
def test_seed_errors_name_the_seed(call):
    """``check_int("seed", ...)`` name -> None / "XXseedXX" / "SEED" in query_seed and copy_seed."""
    with pytest.raises(ConfigError) as caught:
        call()
    assert _names(str(caught.value), "seed")


def test_copy_index_error_names_the_copy_index():
    """``check_int("copy index", ...)`` name -> None / "XXcopy indexXX" / "COPY INDEX" in copy_seed."""
    with pytest.raises(ConfigError) as caught:
        copy_seed(0, -1)
    assert _names(str(caught.value), "copy index")


def test_query_seed_follows_the_documented_rule():
    """blake2b ``digest_size=8`` dropped (a 64-byte digest) in query_seed: the seed must be
    SeedSequence([seed, little-endian 8-byte BLAKE2b of the key]), computed here independently."""
    digest = int.from_bytes(hashlib.blake2b(b"item-7", digest_size=8).digest(), "little")
    expected = int(np.random.SeedSequence([3, digest]).generate_state(1)[0])
    assert query_seed(3, "item-7") == expected


def test_content_key_does_not_depend_on_the_medium_dtype():
    """``.to("cpu", torch.float32)`` -> ``.to("cpu", None)`` / ``.to("cpu")`` in content_key: a float64
    medium with the same values must name the same query as its float32 twin (the digest is of float32)."""
    medium = torch.tensor([[0.25, 0.5], [0.75, 1.0]])
    assert content_key("p", medium.double()) == content_key("p", medium)


def test_unknown_space_error_lists_the_spaces():
    """``ConfigError(f"unknown noise space ...")`` -> ``ConfigError(None)``, and the ", " separator of the
    list of spaces -> "XX, XX"."""
    with pytest.raises(ConfigError) as caught:
        GaussianNoise(0.1, "pixels")
    assert "'pixels'" in str(caught.value) and "normalized, pixel, waveform" in str(caught.value)


def test_gaussian_noise_checks_sigma_against_its_space():
    """``validate_sigma(self.sigma, self.space)`` -> ``validate_sigma(self.sigma, None)`` / no space:
    sigma 2 is fine in normalized space but over the pixel-space maximum (1)."""
    GaussianNoise(2.0, "normalized")
    with pytest.raises(ConfigError, match="pixel space"):
        GaussianNoise(2.0, "pixel")


def test_draw_of_no_seeds_is_an_empty_batch():
    """``if rows else torch.zeros((0, *shape))``: -> ``or True`` (stack of nothing raises), zeros(None),
    zeros((1, *shape))."""
    drawn = GaussianNoise(0.1, "pixel").draw((3, 2), [])
    assert drawn.shape == (0, 3, 2)


def test_normalized_copies_preprocess_the_medium_as_a_batch_of_one_when_no_clean_inputs_are_given():
    """``adapter.preprocess(media.unsqueeze(0)) if clean is None else clean`` -> ``and False`` (clean None is
    indexed), preprocess(None), unsqueeze(None), unsqueeze(1), ``is not None``."""
    adapter = _FakeAdapter()
    media = torch.full((3, 2, 2), 0.5)
    copies = GaussianNoise(0.0, "normalized").copies(adapter, media, [1, 2])
    assert adapter.batches == [(1, 3, 2, 2)]
    assert len(copies) == 2 and torch.equal(copies[0]["pixel_values"], torch.ones(1, 3, 2, 2))


def test_normalized_copies_use_the_clean_inputs_given():
    """``if clean is None else clean`` -> ``or True``: the caller's preprocessed ``clean`` must be used, not
    recomputed."""
    adapter = _FakeAdapter()
    clean = {"pixel_values": torch.full((1, 3, 2, 2), 7.0), "mask": torch.zeros(1)}
    copies = GaussianNoise(0.0, "normalized").copies(adapter, torch.zeros(3, 2, 2), [1], clean=clean)
    assert adapter.batches == []
    assert torch.equal(copies[0]["pixel_values"], clean["pixel_values"]) and torch.equal(
        copies[0]["mask"], clean["mask"]
    )


def test_pixel_copies_are_grouped_one_at_a_time_when_one_copy_fills_the_budget(monkeypatch):
    """``group = max(1, MAX_NOISY_VALUES // ...)`` -> ``max(2, ...)``, and ``copies +=`` -> ``copies =``:
    with room for less than one copy per group each copy is its own group and every group is kept."""
    monkeypatch.setattr(noise, "MAX_NOISY_VALUES", 4)
    adapter = _FakeAdapter()
    copies = GaussianNoise(0.1, "pixel").copies(adapter, torch.full((3, 2, 2), 0.5), [1, 2, 3])
    assert adapter.batches == [(1, 3, 2, 2)] * 3
    assert len(copies) == 3


def test_pixel_copies_of_a_one_value_medium_fill_the_group(monkeypatch):
    """``MAX_NOISY_VALUES // max(media.numel(), 1)`` -> ``max(media.numel(), 2)``: a one-value medium fits
    MAX_NOISY_VALUES copies per group, not half of them."""
    monkeypatch.setattr(noise, "MAX_NOISY_VALUES", 2)
    adapter = _FakeAdapter()
    GaussianNoise(0.1, "waveform").copies(adapter, torch.zeros(1), [1, 2])
    assert adapter.batches == [(2, 1)]


def test_perturb_keeps_the_input_dtype():
    """``.to(device=x.device, dtype=x.dtype)`` -> ``dtype=None`` / no dtype in perturb: float32 noise would
    promote a float16 input to float32."""
    noisy = GaussianNoise(0.1, "pixel").perturb(torch.full((4,), 0.5, dtype=torch.float16), [1])
    assert noisy.dtype == torch.float16


# --- stats.py -------------------------------------------------------------------------------------------


def test_validate_alpha_refuses_a_string_with_config_error():
    """``isinstance(alpha, bool) or not isinstance(...)`` -> ``and``: a string alpha reaches ``0 < alpha``
    (TypeError) instead of ConfigError; and the message -> ``ConfigError(None)``."""
    with pytest.raises(ConfigError, match=r"alpha must be a number in \(0, 1\)"):
        stats.validate_alpha("0.05")


@pytest.mark.parametrize(
    ("k", "n", "word"),
    [(0, 0, "n"), (-1, 3, "k")],
)
def test_count_errors_name_the_count(k, n, word):
    """``check_int("n" | "k", ...)`` name -> None / "XXnXX" / "N" (and the same for "k") in _check_counts."""
    with pytest.raises(ConfigError) as caught:
        stats.clopper_pearson_lower(k, n, 0.05)
    assert _names(str(caught.value), word)


def test_k_over_n_error_says_so():
    """``ConfigError(f"k must be <= n, ...")`` -> ``ConfigError(None)`` in _check_counts."""
    with pytest.raises(ConfigError, match="k must be <= n, got k=3, n=2"):
        stats.clopper_pearson_interval(3, 2)


def test_one_trial_is_a_valid_count():
    """``check_int("n", n, minimum=1)`` -> ``minimum=2``: n = 1 is a binomial sample (one success of one:
    the two-sided 95% interval is [0.025, 1], by hand: 0.025 ** (1/1))."""
    low, high = stats.clopper_pearson_interval(1, 1)
    assert low == pytest.approx(0.025) and high == 1.0


def test_binomial_test_defaults_to_a_fair_coin_and_uses_the_given_p():
    """``p: float = 0.5`` -> ``1.5`` (scipy refuses it), and ``binomtest(k, n, p)`` -> ``binomtest(k, n)``
    (p ignored). By hand: P(X = 0 | n = 2, p = 1/2) = 1/4, two-sided -> 1/2; at p = 0.1, the outcomes no
    likelier than X = 2 (0.01) are X = 2 alone -> 0.01."""
    assert stats.binomial_test(0, 2) == pytest.approx(0.5)
    assert stats.binomial_test(2, 2, p=0.1) == pytest.approx(0.01)


@pytest.mark.parametrize(("first", "second", "word"), [(-1, 0, "only_first"), (0, -1, "only_second")])
def test_mcnemar_errors_name_the_count(first, second, word):
    """``check_int("only_first" | "only_second", ...)`` name -> None / "XX...XX" / upper case."""
    with pytest.raises(ConfigError) as caught:
        stats.mcnemar_exact(first, second)
    assert _names(str(caught.value), word)


def test_rate_with_interval_uses_the_given_confidence():
    """``clopper_pearson_interval(successes, n, confidence)`` -> confidence dropped (0.95 always). By hand:
    k = n = 1 at confidence 0.5 has lower bound (0.25) ** 1 = 0.25."""
    assert stats.rate_with_interval(1, 1, confidence=0.5)["ci"] == [pytest.approx(0.25), 1.0]


# --- config.py ------------------------------------------------------------------------------------------


def test_every_guard_setting_has_help_text():
    """``_help``: ``{"help": text}`` -> key "XXhelpXX" / "HELP" (the command-line options read
    ``metadata["help"]``)."""
    for setting in dataclasses.fields(GuardConfig):
        assert setting.metadata["help"].strip(), setting.name


def test_config_unknown_space_error_lists_the_spaces():
    """The ", " separator of the noise-space list in GuardConfig's error -> "XX, XX"."""
    with pytest.raises(ConfigError, match="choose one of normalized, pixel, waveform"):
        GuardConfig(noise_space="pixels")


def test_config_stores_sigma_as_a_float():
    """``object.__setattr__(self, "sigma", validate_sigma(...))`` -> attribute "XXsigmaXX" / "SIGMA": the
    validated float must replace the given int."""
    sigma = GuardConfig(sigma=1, noise_space="pixel").sigma
    assert type(sigma) is float and sigma == 1.0


@pytest.mark.parametrize(
    ("settings", "word"),
    [
        ({"num_copies": -1}, "num_copies"),
        ({"seed": -1}, "seed"),
        ({"num_clusters": 0}, "num_clusters"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_config_errors_name_the_setting(settings, word):
    """``check_int("num_copies" | "seed" | "num_clusters" | "batch_size", ...)`` name -> None / "XX...XX" /
    upper case in GuardConfig.__post_init__."""
    with pytest.raises(ConfigError) as caught:
        GuardConfig(**settings)
    assert _names(str(caught.value), word)


def test_one_cluster_and_batches_of_one_are_valid():
    """``check_int("num_clusters", ..., minimum=1)`` / ``check_int("batch_size", ..., minimum=1)`` ->
    ``minimum=2``: k = 1 (a plain majority of one cluster) and one candidate per call are allowed."""
    config = GuardConfig(num_clusters=1, batch_size=1)
    assert (config.num_clusters, config.batch_size) == (1, 1)


def test_unknown_settings_error_lists_them_and_the_known_ones():
    """The two ", " separators of GuardConfig.of's error (unknown names, known names) -> "XX, XX"."""
    with pytest.raises(ConfigError) as caught:
        GuardConfig.of(zeta=1, alpha=2)
    message = str(caught.value)
    assert "setting(s) alpha, zeta;" in message and "known: sigma, num_copies, noise_space, seed," in message


# --- cluster.py -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "embeddings", "message"),
    [
        ("abc", np.ones((3, 2)), r"^texts must be a sequence of strings, not a single string\.$"),
        ([], np.ones((0, 2)), r"^aggregate\(\) needs at least one candidate answer\.$"),
        (["a", 1], np.ones((2, 2)), r"^texts must all be strings\.$"),
        (["a", "b", "c"], np.ones((2, 5)), r"^Got 3 texts but 2 embedding rows; they must match\.$"),
        (["a", "b"], np.array([[1.0, np.nan], [0.0, 1.0]]), r"^embeddings contain NaN or infinite values\.$"),
    ],
)
def test_aggregate_input_errors_say_exactly_what_is_wrong(texts, embeddings, message):
    """Each message of cluster._validate -> "XX...XX", and the row count read from ``x.shape[0]`` ->
    ``x.shape[1]`` (5 embedding columns, 2 rows)."""
    with pytest.raises(ConfigError, match=message):
        aggregate(texts, embeddings)


def test_aggregate_seed_range_is_0_to_2_pow_32_exclusive():
    """``0 <= seed < 2**32`` -> ``<= 2**32``, ``< 2 * 32``, ``< 3**32``, ``< 2**33``: 2**32 - 1 and 2**31 are
    accepted, 2**32 is refused."""
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0]])
    aggregate(["a", "b"], embeddings, seed=2**32 - 1)
    aggregate(["a", "b"], embeddings, seed=2**31)
    with pytest.raises(ConfigError, match="seed"):
        aggregate(["a", "b"], embeddings, seed=2**32)


def test_cosine_is_clipped_to_minus_one_and_one():
    """``np.clip(sims, -1.0, 1.0)`` -> lower bound None / -2, upper bound None / 2: for this vector
    ``a . 3a / (|a| |3a|)`` rounds to just above 1 (and its negative to just below -1)."""
    a = np.array([[0.10490011715303971, -0.535669373161111, 0.36159505490948474]])
    raw = float((a * 3 * a).sum() / (np.linalg.norm(a) * np.linalg.norm(3 * a)))
    assert raw > 1.0  # the rounding this test relies on
    assert _cosine_rows(a, 3 * a)[0] == 1.0
    assert _cosine_rows(a, -3 * a)[0] == -1.0


@pytest.mark.parametrize(
    "order",
    [list("mmpspm"), list("pmmspm"), list("mmmspp"), list("spmpmm")],
)
def test_other_clusters_are_labelled_by_decreasing_size(order):
    """``sorted(others, key=lambda c: (-size[c], first[c]))`` -> ``key=None`` / no key (k-means' own label
    order): three far-apart groups of 3 (m), 2 (p) and 1 (s) answers get labels 0, 1, 2 whatever order the
    answers come in (in the first three orders k-means numbers the singleton before the pair)."""
    where = {"m": [0.0, 0.0, 10.0], "p": [0.0, 10.0, 0.0], "s": [10.0, 0.0, 0.0]}
    texts = [f"{group}{i}" for i, group in enumerate(order)]
    embeddings = np.array([where[group] for group in order]) + np.arange(len(order))[:, None] * 1e-3
    outcome = aggregate(texts, embeddings, num_clusters=3)
    assert outcome.cluster_sizes == [3, 2, 1]
    assert outcome.labels == [{"m": 0, "p": 1, "s": 2}[group] for group in order]


def test_duplicate_answers_weigh_in_k_means():
    """``fit_predict(unique_x, sample_weight=counts)`` -> ``sample_weight=None`` / dropped: 1-D answers at
    0, 2, 7 and ten copies of one at 13. Weighted (the duplicates count), the best 2-split is {0, 2, 7} | {13}
    (inertia 26 vs 34.7 for {0, 2} | {7, 13}, by hand); unweighted it would be {0, 2} | {7, 13} (20 vs 26)."""
    texts = ["a", "b", "c", *["d"] * 10]
    embeddings = np.array([[0.0], [2.0], [7.0], *[[13.0]] * 10])
    outcome = aggregate(texts, embeddings)
    assert outcome.cluster_sizes == [10, 3]
    assert outcome.labels == [1, 1, 1, *[0] * 10]


_SPREAD = np.array(
    [
        [-0.575, -1.173],
        [0.638, 1.317],
        [0.493, 0.161],
        [-0.932, 2.872],
        [0.88, -1.139],
        [-0.78, 0.087],
        [-1.555, 0.169],
        [-0.459, 1.226],
    ]
)  # eight points without a clear 3-cluster structure: k-means' answer depends on its seed and restarts


def _partition(labels) -> list[list[int]]:
    return sorted(sorted(i for i, v in enumerate(labels) if v == c) for c in set(labels))


def test_aggregate_default_seed_is_zero():
    """``seed: int = 0`` -> ``1`` in aggregate's signature (on these points seeds 0 and 1 split differently)."""
    texts = [str(i) for i in range(len(_SPREAD))]
    assert aggregate(texts, _SPREAD, num_clusters=3) == aggregate(texts, _SPREAD, num_clusters=3, seed=0)


def test_aggregate_runs_k_means_with_n_init_restarts():
    """``KMeans(n_clusters=k, n_init=N_INIT, ...)`` -> n_init dropped (sklearn's "auto": one k-means++ start):
    the partition must be sklearn's with N_INIT restarts, computed here directly."""
    from sklearn.cluster import KMeans

    from smoothguard.cluster import N_INIT

    texts = [str(i) for i in range(len(_SPREAD))]
    expected = KMeans(n_clusters=3, n_init=N_INIT, random_state=0).fit_predict(_SPREAD)
    assert _partition(aggregate(texts, _SPREAD, num_clusters=3).labels) == _partition(list(expected))


# --- certify/core.py ------------------------------------------------------------------------------------


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
    assert _names(str(caught.value), "n")


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
        assert _names(str(caught.value), word)


# --- server/settings.py ---------------------------------------------------------------------------------

SIZES = ("max_body_bytes", "max_image_pixels", "max_new_tokens", "default_max_new_tokens")


@pytest.mark.parametrize("name", SIZES)
def test_server_size_limits_accept_one_and_name_zero(name):
    """``getattr(self, name) < 1`` -> ``<= 1`` / ``< 2``, and the message (-> None, ``getattr(None, ...)``,
    ``getattr(self, None)``, ...): 1 is a limit, 0 is refused by name and value."""
    from smoothguard.server.settings import ServerSettings

    ServerSettings(**{name: 1, "default_max_new_tokens": 1})
    with pytest.raises(ConfigError, match=rf"^{name} must be >= 1, got 0$"):
        ServerSettings(**{name: 0})


def test_server_integer_settings_refuse_floats_and_accept_one():
    """``isinstance(v, bool) or not isinstance(v, int)`` -> ``and`` for max_prompt_tokens and
    max_batch_queries (2.5 would pass); ``v < 1`` -> ``<= 1`` / ``< 2``; their messages -> None."""
    from smoothguard.server.settings import ServerSettings

    ServerSettings(max_prompt_tokens=1, max_batch_queries=1)
    for name in ("max_prompt_tokens", "max_batch_queries"):
        label = rf"{name} \(--{name.replace('_', '-')}\)"
        with pytest.raises(ConfigError, match=rf"^{label} must be an integer >= 1, got 2.5$"):
            ServerSettings(**{name: 2.5})
        with pytest.raises(ConfigError, match=rf"^{label} must be an integer >= 1, got 0$"):
            ServerSettings(**{name: 0})


def test_server_request_timeout_bounds():
    """``not (isinstance(...) and math.isfinite(...))`` -> ``or`` (inf would pass); ``<= 0`` -> ``< 0`` /
    ``<= 1``; both messages -> None: inf and 0 are refused, 0.5 s is allowed."""
    from smoothguard.server.settings import ServerSettings

    ServerSettings(request_timeout=0.5)
    with pytest.raises(ConfigError, match=r"must be a finite number of seconds, got inf"):
        ServerSettings(request_timeout=math.inf)
    with pytest.raises(ConfigError, match=r"must be > 0 seconds, got 0"):
        ServerSettings(request_timeout=0)


def test_server_batch_window_bounds_are_inclusive():
    """``0 <= batch_window_ms <= MAX_BATCH_WINDOW_MS`` -> ``1 <=``, ``0 <``, ``< MAX``; the message -> None."""
    from smoothguard.server.settings import MAX_BATCH_WINDOW_MS, ServerSettings

    ServerSettings(batch_window_ms=0)
    ServerSettings(batch_window_ms=MAX_BATCH_WINDOW_MS)
    with pytest.raises(ConfigError, match=r"batch_window_ms \(--batch-window-ms\) must be a number of milliseconds"):
        ServerSettings(batch_window_ms=-1)


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"max_num_copies": -1}, True),
        ({"max_sigma": -0.5}, True),
        ({"fetch_timeout": 0}, True),
        ({"max_num_copies": 0, "max_sigma": 0}, False),
        ({"max_sigma": 0.5, "fetch_timeout": 0.5}, False),
    ],
)
def test_server_override_bounds_each_checked_alone(settings, refused):
    """``max_num_copies < 0 or max_sigma < 0 or fetch_timeout <= 0`` -> either ``or`` made ``and``,
    ``max_sigma <= 0`` / ``< 1``, ``fetch_timeout < 0`` / ``<= 1``; the message -> None / "XX...XX" / upper."""
    from smoothguard.server.settings import ServerSettings

    if not refused:
        ServerSettings(**settings)
        return
    with pytest.raises(ConfigError, match=r"^max_num_copies and max_sigma must be >= 0 and fetch_timeout > 0$"):
        ServerSettings(**settings)


def test_server_default_tokens_may_equal_the_limit():
    """``default_max_new_tokens > max_new_tokens`` -> ``>=``; the message -> None."""
    from smoothguard.server.settings import ServerSettings

    ServerSettings(default_max_new_tokens=8, max_new_tokens=8)
    with pytest.raises(ConfigError, match=r"the default max_new_tokens 9 is over the limit 8"):
        ServerSettings(default_max_new_tokens=9, max_new_tokens=8)


def test_server_api_key_empty_is_refused_and_a_key_is_kept():
    """``api_key is not None and not api_key.strip()`` -> ``and api_key.strip()`` (a real key refused); the
    message -> None / "XX...XX" / lower or upper case."""
    from smoothguard.server.settings import ServerSettings

    assert ServerSettings(api_key="k").api_key == "k"
    with pytest.raises(ConfigError, match=r"^the API key is empty; set the variable to a non-empty key$"):
        ServerSettings(api_key="  ")


def test_server_url_prefixes_are_used():
    """``object.__setattr__(self, "_prefixes", ...)`` -> "XX_prefixesXX" / "_PREFIXES" (no prefix would
    match); url_allowed's ``allowed_url(url)`` -> ``allowed_url(None)``, ``return True`` / ``return False``
    swapped; allowed_url's refusal message -> None / "XX...XX" / upper case."""
    from smoothguard.server.settings import ServerSettings
    from smoothguard.server.urls import UrlRefused

    settings = ServerSettings(allow_url_prefixes=("http://images.test/allowed/",))
    assert settings.allowed_url("http://images.test/allowed/a.png") == "http://images.test/allowed/a.png"
    assert settings.url_allowed("http://images.test/allowed/a.png") is True
    assert settings.url_allowed("http://images.test/other/a.png") is False
    with pytest.raises(UrlRefused) as caught:
        settings.allowed_url("http://images.test/other/a.png")
    assert str(caught.value) == (
        "it is not under an allowed --allow-url-prefix (scheme, host, port and the leading path segments must match)"
    )


# ------------------------------------------------------------------------------------------------ answers
def test_answer_parser_names_are_listed_comma_separated():
    """``', '.join(PARSERS)`` -> ``'XX, XX'.join(...)`` in check_parser_name's message."""
    from smoothguard.answers import check_parser_name

    with pytest.raises(ConfigError) as error:
        check_parser_name("maybe")
    assert str(error.value) == "unknown answer parser 'maybe'; choose one of yes-no, choice, refusal"


def test_fold_lower_cases():
    """``.lower()`` -> ``.upper()`` in fold (equivalent for matching, where both sides are folded; not for callers)."""
    from smoothguard.answers import fold

    assert fold("I\u2019M Sorry") == "i'm sorry"


def test_choice_parser_default_letters_and_its_checks():
    """The default ``"ABCD"`` -> ``"XXABCDXX"`` or ``"abcd"``; ``self.letters = None``; ``or`` -> ``and`` between
    the alphabetic and ASCII checks (Greek capitals are upper-case letters, not ASCII); the message -> None."""
    from smoothguard.answers import ChoiceParser, load_parser

    assert ChoiceParser().letters == "ABCD" and load_parser("choice")("B) the second") == "B"
    assert load_parser("choice")("X) no such choice") == ChoiceParser.UNPARSED
    with pytest.raises(ConfigError, match="distinct upper-case letters"):
        ChoiceParser("\u0391\u0392")


def test_refusal_parser_uses_its_own_phrases_and_checks_them():
    """``refusal_phrase(answer, self.phrases)`` -> ``refusal_phrase(answer)``; ``or`` -> ``and`` in the empty /
    blank checks; the message -> None, ``XX...XX`` or upper case."""
    from smoothguard.answers import RefusalParser

    custom = RefusalParser(["no way"])
    assert custom("No way, not today") == "refuse" and custom("I cannot") == "comply"
    for phrases in ([], ["  "]):
        with pytest.raises(ConfigError) as error:
            RefusalParser(phrases)
        assert str(error.value) == "refusal phrases must be a non-empty list of non-empty strings"
