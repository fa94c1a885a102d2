"""SmoothGuard: noise -> one batched generate -> embed -> k-means -> the majority's central answer."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from smoothguard.certify import AdaptiveSampling
from smoothguard.cluster import ClusterOutcome, aggregate
from smoothguard.embed import Embedder, load_embedder
from smoothguard.errors import ConfigError, InputError, UnsupportedError
from smoothguard.inputs import load_audio, load_image, validate_prompt
from smoothguard.models.base import MLLMAdapter, Query
from smoothguard.noise import GaussianNoise, pixel_sigma, validate_sigma
from smoothguard.provenance import versions

#: Position of the clean (noise-free) candidate among a query's candidates.
CLEAN_INDEX = 0


@dataclass
class GuardResult:
    """One guarded answer with its evidence.

    ``candidates`` holds ``num_copies + 1`` answers (fewer when adaptive sampling stopped early: the clean
    one and the first ``copies_used`` copies); ``candidates[clean_index]`` is the clean input's.
    ``cluster_labels`` has one label per candidate (0 = the majority cluster). ``timings`` are
    seconds per stage, measured over the whole batch the query was generated in.
    """

    text: str
    prompt: str
    candidates: list[str]
    cluster_labels: list[int]
    majority_fraction: float
    chosen_index: int
    clean_index: int
    cluster_sizes: list[int]
    num_distinct: int
    timings: dict[str, float]
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def clean_text(self) -> str:
        """The undefended answer (the clean candidate's)."""
        return self.candidates[self.clean_index]

    @property
    def copies_used(self) -> int:
        """Noisy copies answered (``num_copies`` unless adaptive sampling stopped early)."""
        return len(self.candidates) - 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field plus ``clean_text`` and ``copies_used``."""
        return {**asdict(self), "clean_text": self.clean_text, "copies_used": self.copies_used}


class SmoothGuard:
    """Randomised-smoothing defense for a multimodal LLM (Su et al. 2025, arXiv 2510.26830).

    Parameters
    ----------
    model: an adapter from ``load_model``.
    sigma: noise standard deviation in ``noise_space`` units (see ``smoothguard.noise``); paper: 0.1
        in normalised space, recommended 0.1-0.2.
    num_copies: noisy copies per query; the clean input is one more candidate. 0 = undefended
        baseline through the same path.
    noise_space: ``normalized`` | ``pixel`` | ``waveform``; default: the model's first (normalized for
        local image models, waveform for audio models).
    seed: seeds the noise of every query (same inputs + seed = same answer).
    clamp: clamp noisy pixels to [0, 1] / waveforms to [-1, 1] (not used in normalized space).
    num_clusters: k of k-means (paper: 2).
    embedder: ``None`` (packaged all-MiniLM-L6-v2), ``"roberta-mean:PATH"`` or an ``Embedder``.
    batch_size: most candidates per ``generate`` call; ``None`` = all candidates of all queries in one.
    adaptive: off (``False``, the paper: answer all copies at once), or an ``AdaptiveSampling`` (``True``:
        its defaults): answer the copies in rounds and stop once the majority's share is decided. The
        copies answered are always the first ones of the full draw (same noise), and the result's
        ``copies_used`` says how many.
    """

    def __init__(
        self,
        model: MLLMAdapter,
        *,
        sigma: float = 0.1,
        num_copies: int = 10,
        noise_space: str | None = None,
        seed: int = 0,
        clamp: bool = True,
        num_clusters: int = 2,
        embedder: str | Embedder | None = None,
        batch_size: int | None = None,
        adaptive: bool | AdaptiveSampling = False,
    ) -> None:
        noise_space = noise_space or model.default_noise_space
        model.check_noise_space(noise_space)
        _check_int("num_copies", num_copies, minimum=0)
        _check_int("seed", seed, minimum=0)
        _check_int("num_clusters", num_clusters, minimum=1)
        if batch_size is not None:
            _check_int("batch_size", batch_size, minimum=1)
        if not isinstance(adaptive, (bool, AdaptiveSampling)):
            raise ConfigError(f"adaptive must be True, False or an AdaptiveSampling, got {adaptive!r}")
        self.model = model
        self.noise = GaussianNoise(validate_sigma(sigma), noise_space, clamp)
        self.num_copies = num_copies
        self.seed = seed
        self.num_clusters = num_clusters
        self.batch_size = batch_size
        self.adaptive = AdaptiveSampling() if adaptive is True else adaptive or None
        self._embedder_spec = embedder
        self._embedder: Embedder | None = None

    @property
    def embedder(self) -> Embedder:
        """The answer embedder, loaded on first use (the undefended path never needs it)."""
        if self._embedder is None:
            self._embedder = load_embedder(self._embedder_spec)
        return self._embedder

    def config(self) -> dict[str, Any]:
        """The full configuration, as written into every result."""
        config: dict[str, Any] = {
            "sigma": self.noise.sigma,
            "noise_space": self.noise.space,
            "clamp": self.noise.clamp,
            "num_copies": self.num_copies,
            "seed": self.seed,
            "num_clusters": self.num_clusters,
            "batch_size": self.batch_size,
            "clean_index": CLEAN_INDEX,
            "embedder": self.embedder.name if self.num_copies else None,
            "model": self.model.describe(),
            "versions": versions(),
        }
        mean_std = getattr(self.model, "mean_std", None)
        if self.noise.space == "normalized" and mean_std is not None:
            config["sigma_pixel_equivalent"] = pixel_sigma(self.noise.sigma, mean_std[1])
        if self.adaptive is not None:
            config["adaptive"] = self.adaptive.to_dict()
        return config

    # -------------------------------------------------------------------- public
    def generate(
        self,
        prompt: str,
        *,
        image: Any = None,
        audio: Any = None,
        max_new_tokens: int = 128,
        **generate_kwargs: Any,
    ) -> GuardResult:
        """Answer ``prompt`` about ``image`` (path, PIL, array or [3, H, W] tensor in [0, 1]) or
        ``audio`` (path, array or (array, rate)) through SmoothGuard. ``generate_kwargs`` go to HF
        ``generate`` (greedy by default)."""
        if image is not None and audio is not None:
            raise InputError("pass either image= or audio=, not both")
        given = "image" if image is not None else "audio" if audio is not None else None
        if given is not None and given != self.model.modality:
            raise InputError(
                f"{self.model.name} is an {self.model.modality} model: pass {self.model.modality}=, not {given}="
            )
        media = None if given is None else [image if given == "image" else audio]
        return self.generate_batch([prompt], media, max_new_tokens=max_new_tokens, **generate_kwargs)[0]

    def generate_batch(
        self,
        prompts: Sequence[str],
        media: Sequence[Any] | None,
        *,
        max_new_tokens: int = 128,
        **generate_kwargs: Any,
    ) -> list[GuardResult]:
        """Guard several queries at once: all their candidates go through ONE ``generate`` call
        (split by ``batch_size``), ONE embedding call, then one clustering per query. With adaptive
        sampling, one ``generate`` and one embedding call per round, for the queries still undecided.

        ``media``: one image or audio input per prompt, of the model's modality.
        """
        started = time.perf_counter()
        if isinstance(prompts, str):
            raise InputError("generate_batch takes a list of prompts; use generate() for one")
        if media is None or len(media) != len(prompts):
            raise InputError(f"{self.model.name} needs one {self.model.modality} per prompt")
        _check_int("max_new_tokens", max_new_tokens, minimum=1)
        queries = [
            self.candidates(validate_prompt(p), self._load_media(m, i))
            for i, (p, m) in enumerate(zip(prompts, media, strict=True))
        ]
        prepared = time.perf_counter()
        answer = self._answer_adaptive if self.adaptive is not None and self.num_copies else self._answer_all
        groups, embeddings, spent = answer(queries, max_new_tokens, generate_kwargs)
        answered = time.perf_counter()
        outcomes = [self._aggregate(group, vectors) for group, vectors in zip(groups, embeddings, strict=True)]
        clustered = time.perf_counter()
        timings = {
            "preprocess": prepared - started,
            "generate": spent["generate"],
            "embed": spent["embed"],
            "cluster": spent.get("cluster", 0.0) + clustered - answered,
            "total": clustered - started,
            "batch_queries": len(prompts),
        }
        config = {**self.config(), "generation": {"max_new_tokens": max_new_tokens, **generate_kwargs}}
        return [
            GuardResult(
                text=group[outcome.chosen_index],
                prompt=prompt,
                candidates=group,
                cluster_labels=outcome.labels,
                majority_fraction=outcome.majority_fraction,
                chosen_index=outcome.chosen_index,
                clean_index=CLEAN_INDEX,
                cluster_sizes=outcome.cluster_sizes,
                num_distinct=outcome.num_distinct,
                timings=dict(timings),
                config=config,
            )
            for prompt, group, outcome in zip(prompts, groups, outcomes, strict=True)
        ]

    def candidates(self, prompt: str, media: torch.Tensor) -> list[Query]:
        """Model inputs of one query's candidates: the clean one (at ``CLEAN_INDEX``), then
        ``num_copies`` noisy ones. ``media``: pixels [3, H, W] in [0, 1] or a waveform [T]."""
        text = self.model.prompt_text(prompt, media)
        with torch.no_grad():
            clean = self.model.preprocess(media.unsqueeze(0))
            copies = self.noise.copies(self.model, media, self.num_copies, self.seed, clean) if self.num_copies else []
        return [Query(text, clean), *(Query(text, m) for m in copies)]

    # ------------------------------------------------------------------ internal
    def _answer_all(
        self, queries: list[list[Query]], max_new_tokens: int, generate_kwargs: dict[str, Any]
    ) -> tuple[list[list[str]], list[np.ndarray], dict[str, float]]:
        """Every candidate of every query at once: answers and embeddings per query, seconds per stage."""
        started = time.perf_counter()
        answers = self._generate([c for group in queries for c in group], max_new_tokens, generate_kwargs)
        generated = time.perf_counter()
        # Undefended: one candidate per query, nothing to embed (a placeholder vector suffices).
        embeddings = self.embedder.embed(answers) if self.num_copies else np.zeros((len(answers), 1), np.float32)
        per_query = self.num_copies + 1
        spans = range(0, len(answers), per_query)
        groups = [answers[i : i + per_query] for i in spans]
        vectors = [embeddings[i : i + per_query] for i in spans]
        return groups, vectors, {"generate": generated - started, "embed": time.perf_counter() - generated}

    def _answer_adaptive(
        self, queries: list[list[Query]], max_new_tokens: int, generate_kwargs: dict[str, Any]
    ) -> tuple[list[list[str]], list[np.ndarray], dict[str, float]]:
        """The clean candidate and the copies in rounds (``self.adaptive.schedule``), all undecided queries'
        next copies in one ``generate`` per round, until each query's majority is decided."""
        plan = self.adaptive
        assert plan is not None  # only called with adaptive sampling on
        groups: list[list[str]] = [[] for _ in queries]
        vectors: list[np.ndarray] = [np.zeros((0, 0), np.float32) for _ in queries]
        spent = {"generate": 0.0, "embed": 0.0, "cluster": 0.0}
        active = list(range(len(queries)))
        for copies in plan.schedule(self.num_copies):
            started = time.perf_counter()
            parts = [queries[i][len(groups[i]) : copies + 1] for i in active]
            answers = self._generate([c for part in parts for c in part], max_new_tokens, generate_kwargs)
            generated = time.perf_counter()
            embeddings = self.embedder.embed(answers)
            embedded = time.perf_counter()
            offset = 0
            for i, part in zip(active, parts, strict=True):
                groups[i] += answers[offset : offset + len(part)]
                new = embeddings[offset : offset + len(part)]
                vectors[i] = np.concatenate([vectors[i], new]) if len(vectors[i]) else new
                offset += len(part)
            if copies < self.num_copies:
                active = [i for i in active if not self._decided(plan, groups[i], vectors[i])]
            spent["generate"] += generated - started
            spent["embed"] += embedded - generated
            spent["cluster"] += time.perf_counter() - embedded
            if not active:
                break
        return groups, vectors, spent

    def _decided(self, plan: AdaptiveSampling, answers: list[str], embeddings: np.ndarray) -> bool:
        """Whether the majority cluster's share of the noisy copies answered so far is decided."""
        labels = self._aggregate(answers, embeddings).labels
        majority = sum(label == 0 for i, label in enumerate(labels) if i != CLEAN_INDEX)
        return plan.decided(majority, len(answers) - 1, self.num_copies)

    def _aggregate(self, answers: list[str], embeddings: np.ndarray) -> ClusterOutcome:
        return aggregate(answers, embeddings, num_clusters=self.num_clusters, seed=self.seed, prefer_index=CLEAN_INDEX)

    def _generate(self, queries: list[Query], max_new_tokens: int, generate_kwargs: dict[str, Any]) -> list[str]:
        """Answers to ``queries`` in order, at most ``batch_size`` per ``generate`` call."""
        step = self.batch_size or len(queries)
        answers: list[str] = []
        for start in range(0, len(queries), step):
            answers += self.model.generate(
                queries[start : start + step], max_new_tokens=max_new_tokens, **generate_kwargs
            )
        return answers

    def _load_media(self, source: Any, index: int) -> torch.Tensor:
        name = None if isinstance(source, (str, os.PathLike)) else f"{self.model.modality} {index}"
        if self.model.modality == "image":
            return load_image(source, name=name)
        sampling_rate = getattr(self.model, "sampling_rate", None)
        if sampling_rate is None:
            raise UnsupportedError(f"{self.model.name} does not declare an audio sampling rate")
        return load_audio(source, sampling_rate=sampling_rate, name=name)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
