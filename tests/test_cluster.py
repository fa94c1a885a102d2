import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest

from smoothguard.cluster import ClusterOutcome, aggregate
from smoothguard.embed import MiniLMEmbedder, load_embedder
from smoothguard.errors import ConfigError

# Degenerate cases must be handled by design, not by sklearn warnings.
pytestmark = pytest.mark.filterwarnings("error")

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


# --- the method ---------------------------------------------------------------------------------


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


def test_real_minilm_yes_no_with_empty_answer(minilm: MiniLMEmbedder) -> None:
    texts = ["Yes."] * 7 + ["No."] * 3 + [""]
    out = aggregate(texts, minilm.embed(texts), prefer_index=10)
    check_consistent(out, 11)
    assert texts[out.chosen_index] == "Yes."
    assert out.labels[:7] == [0] * 7
    assert out.num_distinct == 3


# --- degenerate cases ---------------------------------------------------------------------------


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


def test_fewer_distinct_answers_than_k() -> None:
    texts = ["A", "A", "B"]
    out = aggregate(texts, points(E0, E0, E1), num_clusters=5)
    check_consistent(out, 3)
    assert out.labels == [0, 0, 1]
    assert out.cluster_sizes == [2, 1]


def test_distinct_strings_with_identical_embeddings_do_not_warn() -> None:
    texts = ["A", "a", "B", "b"]
    out = aggregate(texts, points(E0, E0, E0, E0), num_clusters=2)
    assert out.labels == [0, 0, 0, 0]
    assert out.num_distinct == 4
    assert out.chosen_index == 0


def test_num_clusters_one_picks_closest_to_global_centroid() -> None:
    texts = ["x", "y", "z"]
    out = aggregate(texts, points(E0, E0 + E1, E1), num_clusters=1)
    assert out.labels == [0, 0, 0]
    assert out.chosen_index == 1
    assert out.majority_fraction == 1.0


def test_empty_string_answers() -> None:
    texts = ["", "", "", "no"]
    out = aggregate(texts, points(E0, E0, E0, E1))
    check_consistent(out, 4)
    assert out.labels == [0, 0, 0, 1]
    assert out.chosen_index == 0
    assert out.num_distinct == 2


def test_zero_norm_embeddings_give_zero_cosine_not_nan() -> None:
    texts = ["", "", "a", "b"]
    zero = np.zeros(3)
    out = aggregate(texts, points(zero, zero, E0, E0))
    check_consistent(out, 4)
    assert aggregate([""], points(zero)).similarity_to_centroid == [0.0]
    all_zero = aggregate(["", "x"], points(zero, zero), prefer_index=1)
    assert all_zero.similarity_to_centroid == [0.0, 0.0]
    assert all_zero.chosen_index == 1


# --- ties and labels ----------------------------------------------------------------------------


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


def test_size_tie_ignores_prefer_index_outside_tied_clusters() -> None:
    texts = ["C", "A", "B", "A", "B"]
    out = aggregate(texts, points(E2, E0, E1, E0, E1), num_clusters=3, prefer_index=0)
    assert out.cluster_sizes == [2, 2, 1]
    assert out.labels == [2, 0, 1, 0, 1]
    assert out.chosen_index == 1


def test_similarity_tie_prefers_prefer_index_then_lowest_index() -> None:
    texts = ["no", "yes", "yes", "yes", "yes!"]
    embeddings = points(E1, E0, E0, E0, E0 + 0.5 * E2)
    assert aggregate(texts, embeddings).chosen_index == 1
    assert aggregate(texts, embeddings, prefer_index=3).chosen_index == 3
    # prefer_index in the majority but farther from the centroid does not win.
    assert aggregate(texts, embeddings, prefer_index=4).chosen_index == 1


def test_labels_ordered_by_size_then_first_occurrence() -> None:
    texts = ["c1", "c1", "a1", "a2", "a3", "a4", "a5", "b1", "b2", "b3"]
    embeddings = points(E2, E2, *[E0] * 5, *[E1] * 3)
    out = aggregate(texts, embeddings, num_clusters=3)
    assert out.labels == [2, 2, 0, 0, 0, 0, 0, 1, 1, 1]
    assert out.cluster_sizes == [5, 3, 2]


def test_deterministic_across_runs_and_input_arrays() -> None:
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(11, 16)).astype(np.float32)
    texts = [f"answer {i}" for i in range(11)]
    first = aggregate(texts, embeddings, seed=3)
    for _ in range(3):
        assert aggregate(texts, embeddings.copy(), seed=3) == first
    assert aggregate(texts, embeddings.astype(np.float64), seed=3) == first
    check_consistent(first, 11)


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


# --- validation ---------------------------------------------------------------------------------


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
