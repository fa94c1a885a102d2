"""Tests of ``smoothguard.cluster``."""

from __future__ import annotations

import numpy as np
import pytest

from smoothguard import ConfigError
from smoothguard.cluster import ClusterOutcome, _cosine_rows, aggregate, vote
from smoothguard.embed import MiniLMEmbedder, load_embedder
from support.common import exact

E0, E1, E2 = np.eye(3)


def points(*rows: np.ndarray) -> np.ndarray:
    return np.stack(rows).astype(np.float32)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return load_embedder()


def check_consistent(out: ClusterOutcome, n: int) -> None:
    """Invariants every outcome satisfies."""
    assert len(out.labels) == len(out.similarity_to_centroid) == n
    assert out.majority_label == 0
    assert out.labels[out.chosen_index] == 0
    assert sum(out.cluster_sizes) == n
    assert out.cluster_sizes == [out.labels.count(c) for c in range(len(out.cluster_sizes))]
    assert out.majority_fraction == out.cluster_sizes[0] / n
    assert all(np.isfinite(out.similarity_to_centroid))


@pytest.mark.filterwarnings("error")
def test_majority_member_closest_to_centroid_is_chosen() -> None:
    # 8 "yes" points symmetric around E0 (two exactly at it) and 3 "no" points around E1.
    yes = [E0 + 0.1 * E1, E0 - 0.1 * E1, E0 + 0.1 * E2, E0, E0 - 0.1 * E2, E0 + 0.2 * E1, E0, E0 - 0.2 * E1]
    no = [E1 + 0.1 * E2, E1 - 0.1 * E2, E1]
    texts = [f"yes {i}" for i in range(8)] + [f"no {i}" for i in range(3)]
    embeddings = points(*yes, *no)
    out = aggregate(texts, embeddings)
    check_consistent(out, 11)
    assert out.labels == [0] * 8 + [1] * 3
    assert out.cluster_sizes == [8, 3]
    assert out.majority_fraction == pytest.approx(8 / 11)
    assert out.num_distinct == 11
    # Members at exactly E0 (indices 3 and 6) have cosine 1 to the centroid E0; the lowest index wins.
    assert out.chosen_index == 3
    assert out.similarity_to_centroid[3] == pytest.approx(1.0)
    assert out.similarity_to_centroid[0] < 1.0


@pytest.mark.filterwarnings("error")
def test_real_minilm_refusal_versus_compliance(minilm: MiniLMEmbedder) -> None:
    refusals = ["I'm sorry, I can't help with that.", "Sorry, I cannot assist with this request."]
    compliant = [
        "Sure, here is how to do it: step one, mix the powders.",
        "Sure, here is how to do it: step one, mix the powders.",
        "Sure! Here is how to do it. Step one: mix the powders.",
        "Sure, here is how to do it: first, mix the powders.",
        "Sure, here is how to do it: step one, mix the powders.",
        "Here is how to do it: step one, mix the powders.",
        "Sure, here is how to do it: step one, mix the powders.",
        "Sure, here is how: step one, mix the powders together.",
    ]
    texts = [refusals[0], *compliant[:4], refusals[1], *compliant[4:], refusals[0]]
    out = aggregate(texts, minilm.embed(texts), prefer_index=0)
    check_consistent(out, 11)
    assert out.majority_fraction == pytest.approx(8 / 11)
    assert texts[out.chosen_index] in compliant
    assert out.num_distinct == 7
    assert [out.labels[i] for i in (0, 5, 10)] == [1, 1, 1]


@pytest.mark.filterwarnings("error")
def test_real_minilm_yes_no_with_empty_answer(minilm: MiniLMEmbedder) -> None:
    texts = ["Yes."] * 7 + ["No."] * 3 + [""]
    out = aggregate(texts, minilm.embed(texts), prefer_index=10)
    check_consistent(out, 11)
    assert texts[out.chosen_index] == "Yes."
    assert out.labels[:7] == [0] * 7
    assert out.num_distinct == 3


@pytest.mark.filterwarnings("error")
def test_all_identical_answers() -> None:
    texts = ["The answer is yes."] * 11
    embeddings = np.tile(np.array([[0.3, -1.0, 2.0]], dtype=np.float32), (11, 1))
    out = aggregate(texts, embeddings)
    check_consistent(out, 11)
    assert out.labels == [0] * 11
    assert out.cluster_sizes == [11]
    assert out.majority_fraction == 1.0
    assert out.num_distinct == 1
    assert out.chosen_index == 0
    assert out.similarity_to_centroid == pytest.approx([1.0] * 11)
    assert aggregate(texts, embeddings, prefer_index=10).chosen_index == 10


@pytest.mark.filterwarnings("error")
def test_single_candidate() -> None:
    out = aggregate(["only"], points(E2), num_clusters=2)
    assert out == ClusterOutcome(
        labels=[0],
        majority_label=0,
        chosen_index=0,
        majority_fraction=1.0,
        cluster_sizes=[1],
        num_distinct=1,
        similarity_to_centroid=[1.0],
    )
    assert aggregate(["only"], points(E2), prefer_index=0).chosen_index == 0


@pytest.mark.filterwarnings("error")
def test_two_distinct_answers_with_k2() -> None:
    texts = ["A", "B", "A", "B", "A", "A", "B", "A", "B", "A", "B"]  # 6 A, 5 B
    embeddings = points(*[E0 if t == "A" else E1 for t in texts])
    out = aggregate(texts, embeddings, num_clusters=2)
    check_consistent(out, 11)
    assert out.labels == [0 if t == "A" else 1 for t in texts]
    assert out.cluster_sizes == [6, 5]
    assert out.num_distinct == 2
    assert out.chosen_index == 0
    assert aggregate(texts, embeddings, prefer_index=4).chosen_index == 4
    # prefer_index in the minority changes nothing when sizes differ.
    assert aggregate(texts, embeddings, prefer_index=1).chosen_index == 0


@pytest.mark.filterwarnings("error")
def test_fewer_distinct_answers_than_k() -> None:
    texts = ["A", "A", "B"]
    out = aggregate(texts, points(E0, E0, E1), num_clusters=5)
    check_consistent(out, 3)
    assert out.labels == [0, 0, 1]
    assert out.cluster_sizes == [2, 1]


@pytest.mark.filterwarnings("error")
def test_distinct_strings_with_identical_embeddings_do_not_warn() -> None:
    texts = ["A", "a", "B", "b"]
    out = aggregate(texts, points(E0, E0, E0, E0), num_clusters=2)
    assert out.labels == [0, 0, 0, 0]
    assert out.num_distinct == 4
    assert out.chosen_index == 0


@pytest.mark.filterwarnings("error")
def test_num_clusters_one_picks_closest_to_global_centroid() -> None:
    texts = ["x", "y", "z"]
    out = aggregate(texts, points(E0, E0 + E1, E1), num_clusters=1)
    assert out.labels == [0, 0, 0]
    assert out.chosen_index == 1
    assert out.majority_fraction == 1.0


@pytest.mark.filterwarnings("error")
def test_empty_string_answers() -> None:
    texts = ["", "", "", "no"]
    out = aggregate(texts, points(E0, E0, E0, E1))
    check_consistent(out, 4)
    assert out.labels == [0, 0, 0, 1]
    assert out.chosen_index == 0
    assert out.num_distinct == 2


@pytest.mark.filterwarnings("error")
def test_zero_norm_embeddings_give_zero_cosine_not_nan() -> None:
    texts = ["", "", "a", "b"]
    zero = np.zeros(3)
    out = aggregate(texts, points(zero, zero, E0, E0))
    check_consistent(out, 4)
    assert aggregate([""], points(zero)).similarity_to_centroid == [0.0]
    all_zero = aggregate(["", "x"], points(zero, zero), prefer_index=1)
    assert all_zero.similarity_to_centroid == [0.0, 0.0]
    assert all_zero.chosen_index == 1


@pytest.mark.filterwarnings("error")
def test_size_tie_goes_to_cluster_of_prefer_index() -> None:
    texts = ["A", "B", "A", "B"]
    embeddings = points(E0, E1, E0, E1)
    without = aggregate(texts, embeddings)
    assert without.labels == [0, 1, 0, 1]
    assert without.chosen_index == 0
    with_prefer = aggregate(texts, embeddings, prefer_index=3)
    assert with_prefer.labels == [1, 0, 1, 0]
    assert with_prefer.chosen_index == 3
    assert with_prefer.majority_fraction == 0.5


@pytest.mark.filterwarnings("error")
def test_size_tie_ignores_prefer_index_outside_tied_clusters() -> None:
    texts = ["C", "A", "B", "A", "B"]
    out = aggregate(texts, points(E2, E0, E1, E0, E1), num_clusters=3, prefer_index=0)
    assert out.cluster_sizes == [2, 2, 1]
    assert out.labels == [2, 0, 1, 0, 1]
    assert out.chosen_index == 1


@pytest.mark.filterwarnings("error")
def test_similarity_tie_prefers_prefer_index_then_lowest_index() -> None:
    texts = ["no", "yes", "yes", "yes", "yes!"]
    embeddings = points(E1, E0, E0, E0, E0 + 0.5 * E2)
    assert aggregate(texts, embeddings).chosen_index == 1
    assert aggregate(texts, embeddings, prefer_index=3).chosen_index == 3
    # prefer_index in the majority but farther from the centroid does not win.
    assert aggregate(texts, embeddings, prefer_index=4).chosen_index == 1


@pytest.mark.filterwarnings("error")
def test_labels_ordered_by_size_then_first_occurrence() -> None:
    texts = ["c1", "c1", "a1", "a2", "a3", "a4", "a5", "b1", "b2", "b3"]
    embeddings = points(E2, E2, *[E0] * 5, *[E1] * 3)
    out = aggregate(texts, embeddings, num_clusters=3)
    assert out.labels == [2, 2, 0, 0, 0, 0, 0, 1, 1, 1]
    assert out.cluster_sizes == [5, 3, 2]


@pytest.mark.filterwarnings("error")
def test_deterministic_across_runs_and_input_arrays() -> None:
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(11, 16)).astype(np.float32)
    texts = [f"answer {i}" for i in range(11)]
    first = aggregate(texts, embeddings, seed=3)
    for _ in range(3):
        assert aggregate(texts, embeddings.copy(), seed=3) == first
    assert aggregate(texts, embeddings.astype(np.float64), seed=3) == first
    check_consistent(first, 11)


@pytest.mark.filterwarnings("error")
def test_duplicates_match_their_unique_strings() -> None:
    texts = ["a", "b", "a", "c", "a", "b"]
    embeddings = points(E0, E0 + 0.2 * E1, E0, E2, E0, E0 + 0.2 * E1)
    out = aggregate(texts, embeddings)
    check_consistent(out, 6)
    for i, j in [(0, 2), (0, 4), (1, 5)]:
        assert out.labels[i] == out.labels[j]
        assert out.similarity_to_centroid[i] == out.similarity_to_centroid[j]
    assert out.labels == [0, 0, 0, 1, 0, 0]
    assert out.num_distinct == 3


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(
    ("texts", "embeddings", "kwargs", "match"),
    [
        ([], np.zeros((0, 3)), {}, "at least one"),
        ("abc", np.zeros((3, 3)), {}, "single string"),
        (["a", 1], np.zeros((2, 3)), {}, "strings"),
        (["a", "b"], np.zeros((3, 3)), {}, "must match"),
        (["a", "b"], np.zeros(2), {}, "2-D"),
        (["a", "b"], np.zeros((2, 0)), {}, "2-D"),
        (["a", "b"], np.zeros((2, 3, 1)), {}, "2-D"),
        (["a", "b"], np.array([[0.0, np.nan], [1.0, 2.0]]), {}, "NaN"),
        (["a", "b"], np.array([[0.0, np.inf], [1.0, 2.0]]), {}, "NaN"),
        (["a", "b"], [["x", "y"], ["z", "w"]], {}, "numeric"),
        (["a", "b"], np.zeros((2, 3)), {"num_clusters": 0}, "num_clusters"),
        (["a", "b"], np.zeros((2, 3)), {"num_clusters": 1.5}, "num_clusters"),
        (["a", "b"], np.zeros((2, 3)), {"num_clusters": True}, "num_clusters"),
        (["a", "b"], np.zeros((2, 3)), {"seed": -1}, "seed"),
        (["a", "b"], np.zeros((2, 3)), {"prefer_index": 2}, "prefer_index"),
        (["a", "b"], np.zeros((2, 3)), {"prefer_index": -1}, "prefer_index"),
    ],
)
def test_invalid_inputs_raise_config_error(texts, embeddings, kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        aggregate(texts, embeddings, **kwargs)


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


def test_vote_counts_majority_and_ties():
    outcome = vote(["Yes.", "No", "no!", "Yes", "Nope"], ["yes", "no", "no", "yes", "no"], prefer_index=0)
    assert outcome.votes == {"no": 3, "yes": 2} and outcome.cluster_sizes == [3, 2]
    assert outcome.labels == [1, 0, 0, 1, 0] and outcome.chosen_index == 1 and outcome.majority_fraction == 0.6
    # A 2-2 tie goes to the preferred (clean) candidate's label, whichever comes first.
    tie = vote(["a", "b", "c", "d"], ["no", "yes", "no", "yes"], prefer_index=1)
    assert tie.votes == {"yes": 2, "no": 2} and tie.chosen_index == 1 and tie.labels == [1, 0, 1, 0]
    # Without a preference the label seen first wins, and the majority's first member is chosen.
    assert vote(["a", "b", "c", "d"], ["no", "yes", "no", "yes"]).chosen_index == 0
    assert vote(["x", "y", "z"], ["refuse", "comply", "comply"], prefer_index=0).chosen_index == 1
    with pytest.raises(ConfigError, match="one parsed label per candidate"):
        vote(["a"], ["x", "y"])


def test_vote_numbers_the_other_classes_by_decreasing_count_and_reports_every_field():
    """vote: the sort key of the non-majority classes (``-counts[c]``) -> None / dropped / ``+counts[c]``
    (here alphabetical and increasing orders differ from decreasing); ``prefer_index in members`` -> ``and
    False``; ``majority_label=0``, ``num_distinct`` and ``similarity_to_centroid=[]`` -> None / 1."""
    texts = ["a.", "b", "b!", "c", "c.", "c", "d"]
    parsed = ["a", "b", "b", "c", "c", "c", "d"]
    outcome = vote(texts, parsed, prefer_index=4)
    assert outcome.labels == [2, 1, 1, 0, 0, 0, 3]  # c (3), then b (2), then a and d (1 each, first seen first)
    assert outcome.cluster_sizes == [3, 2, 1, 1] and outcome.votes == {"c": 3, "b": 2, "a": 1, "d": 1}
    assert outcome.chosen_index == 4 and outcome.majority_label == 0 and outcome.majority_fraction == 3 / 7
    assert outcome.num_distinct == 6 and outcome.similarity_to_centroid == []
    assert vote(texts, parsed).chosen_index == 3  # no preference: the majority's first member


@pytest.mark.parametrize(
    ("texts", "parsed"),
    [("abc", ["a", "b", "c"]), (["a", "b", "c"], "abc"), (["a", "b"], ["a"]), ([], [])],
)
def test_vote_needs_one_label_per_answer(texts, parsed):
    """vote's check: ``isinstance(texts, str) or isinstance(parsed, str)`` -> ``and`` (a string as either
    argument must be refused on its own), the message -> "XX...XX"."""
    message = "vote() needs one parsed label per candidate answer, and at least one"
    with pytest.raises(ConfigError, match=exact(message)):
        vote(texts, parsed)


def test_prefer_index_is_checked_against_the_candidates_by_name():
    """vote and aggregate: ``check_int("prefer_index", ..., maximum=len(texts) - 1)``: the name -> None /
    "XX...XX" / upper case, the maximum -> None / dropped / ``+ 1`` / ``- 2`` (the last index is allowed, one
    past it is not); aggregate's ``check_int("num_clusters", ...)`` name -> "XX...XX"."""
    texts, parsed, embeddings = ["a", "b", "c"], ["x", "y", "y"], np.eye(3)
    assert vote(texts, parsed, prefer_index=2).chosen_index == 2
    aggregate(texts, embeddings, prefer_index=2)
    message = "prefer_index must be an integer in [0, 2], got 3"
    with pytest.raises(ConfigError, match=exact(message)):
        vote(texts, parsed, prefer_index=3)
    with pytest.raises(ConfigError, match=exact(message)):
        aggregate(texts, embeddings, prefer_index=3)
    with pytest.raises(ConfigError, match=exact("num_clusters must be an integer >= 1, got 0")):
        aggregate(texts, embeddings, num_clusters=0)
