"""Aggregation of candidate answers, the selection step of SmoothGuard: k-means over their embeddings
(:func:`aggregate`, the paper's) or a majority vote over parsed labels (:func:`vote`).

Method (Su et al. 2025): k-means with k = ``num_clusters`` on the raw answer embeddings (not
normalised, as in the paper); the largest cluster is the majority; the answer returned is the member of
the majority cluster with the highest cosine similarity to that cluster's centroid (the mean of its
members' embeddings).

Determinism and degenerate cases:

- Identical strings are clustered once, weighted by their count (``sample_weight``); this is the same
  objective as clustering the duplicates and avoids duplicate-point warnings. Identical strings share
  one embedding (the mean of their rows), so they always get the same label and similarity.
- k is capped at the number of distinct answers (and of distinct embedding rows); with k = 1 there is
  one cluster and sklearn is not called.
- Labels: 0 is always the majority cluster; the others follow by decreasing size, ties broken by the
  first candidate index in the cluster.
- Majority ties (equal sizes): the cluster holding ``prefer_index`` if it is among the tied ones, else
  the tied cluster whose first member comes first.
- Similarity ties (within 1e-12) inside the majority: ``prefer_index`` if it is among the best, else
  the lowest index.
- A zero vector has cosine 0 to anything (never NaN).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from smoothguard.errors import ConfigError, check_int, check_seed

N_INIT = 10
_SIM_TIE_TOL = 1e-12


@dataclass(frozen=True)
class ClusterOutcome:
    """Result of :func:`aggregate` or :func:`vote`; every per-candidate list is in candidate order.
    ``votes``: a parsed vote's count per label, majority first (empty for k-means);
    ``similarity_to_centroid``: k-means' cosine of each candidate to its cluster's centroid (empty for a vote)."""

    labels: list[int]
    majority_label: int
    chosen_index: int
    majority_fraction: float
    cluster_sizes: list[int]
    num_distinct: int
    similarity_to_centroid: list[float]
    votes: dict[str, int] = field(default_factory=dict)


def _validate(
    texts: Sequence[str], embeddings: np.ndarray, num_clusters: int, seed: int, prefer_index: int | None
) -> tuple[list[str], np.ndarray]:
    if isinstance(texts, str):
        raise ConfigError("texts must be a sequence of strings, not a single string.")
    texts = list(texts)
    if not texts:
        raise ConfigError("aggregate() needs at least one candidate answer.")
    if not all(isinstance(t, str) for t in texts):
        raise ConfigError("texts must all be strings.")
    try:
        x = np.asarray(embeddings, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"embeddings must be a numeric array [n, d]: {exc}") from exc
    if x.ndim != 2 or x.shape[1] < 1:
        raise ConfigError(f"embeddings must be a 2-D array [n, d] with d >= 1, got shape {x.shape}.")
    if x.shape[0] != len(texts):
        raise ConfigError(f"Got {len(texts)} texts but {x.shape[0]} embedding rows; they must match.")
    if not np.isfinite(x).all():
        raise ConfigError("embeddings contain NaN or infinite values.")
    check_int("num_clusters", num_clusters, minimum=1)
    check_seed(seed)
    if prefer_index is not None:
        check_int("prefer_index", prefer_index, minimum=0, maximum=len(texts) - 1)
    return texts, x


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of ``a`` and ``b`` (both ``[m, d]``) -> ``[m]``; 0 where either row is zero."""
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    safe = denom > 0
    sims = np.where(safe, dots / np.where(safe, denom, 1.0), 0.0)
    return np.clip(sims, -1.0, 1.0)


def aggregate(
    texts: Sequence[str],
    embeddings: np.ndarray,
    *,
    num_clusters: int = 2,
    seed: int = 0,
    prefer_index: int | None = None,
) -> ClusterOutcome:
    """Cluster ``n`` candidate answers and pick the representative of the majority cluster.

    ``embeddings`` is ``[n, d]`` (row i embeds ``texts[i]``); ``seed`` is k-means' ``random_state``;
    ``prefer_index`` (the clean candidate, in the guard) wins ties. Raises ``ConfigError`` on bad input.
    """
    texts, x = _validate(texts, embeddings, num_clusters, seed, prefer_index)
    n = len(texts)

    # Deduplicate strings: unique answer u has weight counts[u] and the mean of its embedding rows.
    first_slot: dict[str, int] = {}
    inverse = np.array([first_slot.setdefault(t, len(first_slot)) for t in texts], dtype=np.intp)
    num_distinct = len(first_slot)
    counts = np.bincount(inverse, minlength=num_distinct).astype(np.float64)
    unique_x = np.zeros((num_distinct, x.shape[1]))
    np.add.at(unique_x, inverse, x)
    unique_x /= counts[:, None]

    k = min(num_clusters, num_distinct, len(np.unique(unique_x, axis=0)))
    if k == 1:
        unique_raw = np.zeros(num_distinct, dtype=np.intp)
    else:
        from sklearn.cluster import KMeans  # imported on first use: sklearn costs ~0.9 s to import

        kmeans = KMeans(n_clusters=k, n_init=N_INIT, random_state=int(seed))
        unique_raw = kmeans.fit_predict(unique_x, sample_weight=counts)
    raw = unique_raw[inverse]

    # Relabel: majority first, then by decreasing size, ties by first occurrence.
    present = np.unique(raw)
    size = {int(c): int((raw == c).sum()) for c in present}
    first = {int(c): int(np.argmax(raw == c)) for c in present}
    largest = max(size.values())
    tied = [c for c in size if size[c] == largest]
    if prefer_index is not None and int(raw[prefer_index]) in tied:
        majority_raw = int(raw[prefer_index])
    else:
        majority_raw = min(tied, key=first.__getitem__)
    others = sorted((c for c in size if c != majority_raw), key=lambda c: (-size[c], first[c]))
    new_label = {c: i for i, c in enumerate([majority_raw, *others])}
    unique_labels = np.array([new_label[int(c)] for c in unique_raw], dtype=np.intp)
    labels = unique_labels[inverse]

    # Centroid = mean of member embeddings (weighted mean of the unique rows).
    num_labels = len(new_label)
    weighted_sums = np.zeros((num_labels, x.shape[1]))
    np.add.at(weighted_sums, unique_labels, counts[:, None] * unique_x)
    centroids = weighted_sums / np.bincount(unique_labels, weights=counts, minlength=num_labels)[:, None]
    sims = _cosine_rows(unique_x, centroids[unique_labels])[inverse]

    members = np.flatnonzero(labels == 0)
    best = sims[members].max()
    best_members = members[sims[members] >= best - _SIM_TIE_TOL]
    chosen = prefer_index if prefer_index is not None and prefer_index in best_members else best_members[0]

    return ClusterOutcome(
        labels=[int(v) for v in labels],
        majority_label=0,
        chosen_index=int(chosen),
        majority_fraction=len(members) / n,
        cluster_sizes=[size[c] for c in [majority_raw, *others]],
        num_distinct=num_distinct,
        similarity_to_centroid=[float(s) for s in sims],
    )


def vote(texts: Sequence[str], parsed: Sequence[str], *, prefer_index: int | None = None) -> ClusterOutcome:
    """Majority vote over ``parsed``, the label of each candidate answer ``texts[i]`` (e.g. ``yes``/``no``).

    Labels number the parsed classes as :func:`aggregate` numbers clusters: 0 = the majority, then by
    decreasing count, ties by first occurrence; a majority tie goes to ``prefer_index``'s class when it is
    among the tied ones, else to the tied class seen first. The answer returned is ``prefer_index``'s when it
    is in the majority, else the majority's first member.
    """
    if isinstance(texts, str) or isinstance(parsed, str) or len(texts) != len(parsed) or not len(texts):
        raise ConfigError("vote() needs one parsed label per candidate answer, and at least one")
    if prefer_index is not None:
        check_int("prefer_index", prefer_index, minimum=0, maximum=len(texts) - 1)
    counts = Counter(parsed)  # insertion order = first occurrence
    largest = max(counts.values())
    tied = [label for label, count in counts.items() if count == largest]
    preferred = None if prefer_index is None else parsed[prefer_index]
    majority = preferred if preferred in tied else tied[0]
    order = [majority, *sorted((c for c in counts if c != majority), key=lambda c: -counts[c])]
    number = {label: i for i, label in enumerate(order)}
    labels = [number[label] for label in parsed]
    members = [i for i, label in enumerate(labels) if label == 0]
    chosen = prefer_index if prefer_index in members else members[0]
    return ClusterOutcome(
        labels=labels,
        majority_label=0,
        chosen_index=chosen,
        majority_fraction=len(members) / len(texts),
        cluster_sizes=[counts[label] for label in order],
        num_distinct=len(set(texts)),
        similarity_to_centroid=[],
        votes={label: counts[label] for label in order},
    )
