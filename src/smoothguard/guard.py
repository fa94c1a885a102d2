"""SmoothGuard: noise -> (purifier) -> one batched generate -> embed + k-means (or a parsed vote) -> the
majority's answer.

``SmoothGuard.sample`` is the one sampler of noisy candidates: ``generate_batch`` (all copies, or adaptive
rounds), and ``smoothguard.certify``'s ``predict``/``certify`` answer their copies through it, so copy ``i``
of a query is the same noise everywhere (the per-copy seed rule of ``smoothguard.noise``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from smoothguard.answers import load_parser
from smoothguard.cluster import ClusterOutcome, aggregate, vote
from smoothguard.config import GuardConfig
from smoothguard.embed import Embedder, load_embedder
from smoothguard.errors import InputError, UnsupportedError, check_int
from smoothguard.inputs import load_audio, load_image, validate_prompt
from smoothguard.models.base import Generation, MLLMAdapter, Query
from smoothguard.noise import GaussianNoise, content_key, copy_seeds, pixel_sigma, query_seed
from smoothguard.provenance import versions
from smoothguard.purify import identity, load_purifier

#: Position of the clean (noise-free) candidate among a query's candidates.
CLEAN_INDEX = 0
#: Most bytes of candidates' model inputs held at once: whatever ``batch_size`` says, a ``generate`` call
#: gets at most this much (a remote model's inputs are full-size 8-bit images: a 4096x4096 image's copies
#: then go in calls of 21).
MAX_BATCH_BYTES = 2**30


@dataclass
class GuardResult:
    """One guarded answer with its evidence.

    ``candidates`` holds ``num_copies + 1`` answers (fewer when adaptive sampling stopped early: the clean
    one and the first ``copies_used`` copies); ``candidates[clean_index]`` is the clean input's.
    ``cluster_labels`` has one label per candidate (0 = the majority cluster). ``timings`` are
    seconds per stage, measured over the whole batch the query was generated in. ``prompt_tokens``,
    ``completion_tokens`` and ``finish_reasons`` (``stop`` | ``length``) are per candidate, as the model
    reports them (a remote model's counts may be ``None``). ``votes``: with a parsed vote, the count of each
    parsed label over all candidates, majority first (empty with k-means).
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
    prompt_tokens: list[int | None] = field(default_factory=list)
    completion_tokens: list[int | None] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    votes: dict[str, int] = field(default_factory=dict)

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


@dataclass(frozen=True)
class PreparedQuery:
    """One query ready to sample: ``medium`` (pixels [3, H, W] in [0, 1] or a waveform [T]), its prompt's
    token ids ``text`` (each [1, L]), ``clean``, the medium's model inputs (``adapter.preprocess``), and
    ``key``, the name its noise is drawn under (``smoothguard.noise``: its id, or a digest of its content)."""

    prompt: str
    medium: torch.Tensor
    text: dict[str, torch.Tensor]
    clean: dict[str, torch.Tensor]
    key: str


class SmoothGuard:
    """Randomised-smoothing defense for a multimodal LLM (Su et al. 2025, arXiv 2510.26830).

    ``SmoothGuard(model, config)`` or ``SmoothGuard(model, sigma=0.1, num_copies=10, ...)`` with the fields
    of :class:`~smoothguard.config.GuardConfig` (both: the keywords change the config). ``embedder`` may
    also be an already loaded embedder (an object with ``name`` and ``embed``), and ``purifier`` an object
    (a purifier, ``torch.nn.Module`` or callable of pixels: ``smoothguard.purify``). ``model``: an adapter
    from ``load_model``. ``guard.config`` is the resolved config (concrete noise space); ``guard.purifier``
    the loaded purifier (or ``None``); ``guard.replace(**changes)`` is the same guard with other settings
    (model, embedder and purifier shared unless they change).
    """

    def __init__(
        self,
        model: MLLMAdapter,
        config: GuardConfig | None = None,
        *,
        embedder: str | Embedder | None = None,
        purifier: Any = None,
        **settings: Any,
    ) -> None:
        instance = None
        if embedder is not None and not isinstance(embedder, str):
            instance = load_embedder(embedder)
            settings["embedder"] = instance.name
        elif embedder is not None:
            settings["embedder"] = embedder
        cleaner = None
        if purifier is not None and not isinstance(purifier, str):
            cleaner = load_purifier(purifier, device=str(model.device))
            settings["purifier"] = cleaner.name
        elif purifier is not None:
            settings["purifier"] = purifier
        config = (config or GuardConfig()).replace(**settings) if settings else config or GuardConfig()
        config = config.resolve(model.default_noise_space)
        model.check_noise_space(config.noise_space)
        self.model = model
        self._config = config
        self.noise = GaussianNoise(config.sigma, config.noise_space, config.clamp)
        self._embedder: Embedder | None = instance
        if cleaner is None and config.purifier is not None:
            cleaner = load_purifier(config.purifier, device=str(model.device))
        self.purifier = cleaner
        self._parser = None if config.parser is None else load_parser(config.parser)

    @classmethod
    def from_config(
        cls, model: MLLMAdapter, config: GuardConfig, *, embedder: Embedder | None = None, purifier: Any = None
    ) -> SmoothGuard:
        """The guard of ``config`` for ``model``; ``embedder``, ``purifier``: already loaded ones to use."""
        return cls(model, config, embedder=embedder, purifier=purifier)

    @property
    def config(self) -> GuardConfig:
        """The resolved settings (``noise_space`` and ``sigma`` concrete)."""
        return self._config

    def replace(self, **changes: Any) -> SmoothGuard:
        """This guard with ``changes`` to its config; the model, and the embedder and purifier unless they
        change, are shared."""
        keep = None if "embedder" in changes else self._embedder
        cleaner = None if "purifier" in changes else self.purifier
        return SmoothGuard(self.model, self._config.replace(**changes), embedder=keep, purifier=cleaner)

    @property
    def embedder(self) -> Embedder:
        """The answer embedder, loaded on first use (the undefended path never needs it) on the model's
        device (its GPU when it has one)."""
        if self._embedder is None:
            self._embedder = load_embedder(self._config.embedder, device=str(self.model.device))
        return self._embedder

    def describe(self) -> dict[str, Any]:
        """The full configuration, as written into every result: the settings, the embedder's name
        (``None`` undefended or with a parsed vote), the purifier's identity, the clean candidate's index,
        the model's identity and package versions."""
        config = self._config
        described: dict[str, Any] = {
            **config.to_dict(),
            "clean_index": CLEAN_INDEX,
            "embedder": self.embedder.name if config.defended and config.vote == "cluster" else None,
            "purifier_identity": None if self.purifier is None else identity(self.purifier),
            "model": self.model.describe(),
            "versions": versions(),
        }
        mean_std = getattr(self.model, "mean_std", None)
        if self.noise.space == "normalized" and mean_std is not None:
            described["sigma_pixel_equivalent"] = pixel_sigma(self.noise.sigma, mean_std[1])
        return described

    # -------------------------------------------------------------------- public
    def generate(
        self,
        prompt: str,
        *,
        image: Any = None,
        audio: Any = None,
        query_id: str | None = None,
        max_new_tokens: int = 128,
        **generate_kwargs: Any,
    ) -> GuardResult:
        """Answer ``prompt`` about ``image`` (path, PIL, array or [3, H, W] tensor in [0, 1]) or
        ``audio`` (path, array or (array, rate)) through SmoothGuard. ``query_id``: the query's name for its
        noise (default: a digest of its content). ``generate_kwargs`` go to HF ``generate`` (greedy by
        default)."""
        if image is not None and audio is not None:
            raise InputError("pass either image= or audio=, not both")
        given = "image" if image is not None else "audio" if audio is not None else None
        if given is not None and given != self.model.modality:
            raise InputError(
                f"{self.model.name} is an {self.model.modality} model: pass {self.model.modality}=, not {given}="
            )
        media = None if given is None else [image if given == "image" else audio]
        ids = None if query_id is None else [query_id]
        return self.generate_batch([prompt], media, ids=ids, max_new_tokens=max_new_tokens, **generate_kwargs)[0]

    def generate_batch(
        self,
        prompts: Sequence[str],
        media: Sequence[Any] | None,
        *,
        ids: Sequence[str] | None = None,
        max_new_tokens: int = 128,
        **generate_kwargs: Any,
    ) -> list[GuardResult]:
        """Guard several queries at once: all their candidates go through ONE ``generate`` call
        (split by ``batch_size``), ONE embedding call, then one clustering per query. With adaptive
        sampling, one ``generate`` and one embedding call per round, for the queries still undecided.

        ``media``: one image or audio input per prompt, of the model's modality. ``ids``: the queries'
        names for their noise (default: digests of their content), e.g. evaluation item ids.
        """
        started = time.perf_counter()
        check_int("max_new_tokens", max_new_tokens, minimum=1)
        queries = self.prepare(prompts, media, ids)
        if not queries:
            return []
        spent = {"preprocess": time.perf_counter() - started, "generate": 0.0, "embed": 0.0, "cluster": 0.0}
        num_copies = self._config.num_copies
        plan = self._config.adaptive
        schedule = plan.schedule(num_copies) if plan is not None and num_copies else [num_copies]
        groups: list[list[Generation]] = [[] for _ in queries]
        vectors: list[np.ndarray] = [np.zeros((0, 1), np.float32) for _ in queries]
        active = list(range(len(queries)))
        answered = 0
        known: dict[str, np.ndarray] = {}  # answer -> its embedding, over this call's rounds
        for upto in schedule:
            parts = self._sample(
                [queries[i] for i in active],
                range(answered, upto),
                answered == 0,
                spent,
                max_new_tokens,
                generate_kwargs,
            )
            embedding = time.perf_counter()
            flat = [generation.text for part in parts for generation in part]
            clustered = num_copies and self._parser is None
            embeddings = self._embed(flat, known) if clustered else np.zeros((len(flat), 1), np.float32)
            spent["embed"] += time.perf_counter() - embedding
            offset = 0
            for i, part in zip(active, parts, strict=True):
                groups[i] += part
                new = embeddings[offset : offset + len(part)]
                vectors[i] = np.concatenate([vectors[i], new]) if len(vectors[i]) else new
                offset += len(part)
            answered = upto
            if upto < num_copies:
                deciding = time.perf_counter()
                active = [i for i in active if not self._decided([g.text for g in groups[i]], vectors[i])]
                spent["cluster"] += time.perf_counter() - deciding
            if not active:
                break
        clustering = time.perf_counter()
        texts = [[generation.text for generation in group] for group in groups]
        outcomes = [self._aggregate(group, vecs) for group, vecs in zip(texts, vectors, strict=True)]
        spent["cluster"] += time.perf_counter() - clustering
        timings = {**spent, "total": time.perf_counter() - started, "batch_queries": len(queries)}
        generation = {"max_new_tokens": max_new_tokens, **generate_kwargs}
        config = {**self.describe(), "generation": {key: _jsonable(value) for key, value in generation.items()}}
        return [
            GuardResult(
                text=group[outcome.chosen_index].text,
                prompt=query.prompt,
                candidates=[generation.text for generation in group],
                cluster_labels=outcome.labels,
                majority_fraction=outcome.majority_fraction,
                chosen_index=outcome.chosen_index,
                clean_index=CLEAN_INDEX,
                cluster_sizes=outcome.cluster_sizes,
                num_distinct=outcome.num_distinct,
                timings=dict(timings),
                config=config,
                prompt_tokens=[generation.prompt_tokens for generation in group],
                completion_tokens=[generation.completion_tokens for generation in group],
                finish_reasons=[generation.finish_reason for generation in group],
                votes=outcome.votes,
            )
            for query, group, outcome in zip(queries, groups, outcomes, strict=True)
        ]

    def prepare(
        self, prompts: Sequence[str], media: Sequence[Any] | None, ids: Sequence[str] | None = None
    ) -> list[PreparedQuery]:
        """Load and encode each prompt with its medium (one image or audio input per prompt, of the model's
        modality: a path, PIL image, array or tensor). ``ids``: one name per query for its noise
        (``"id:" + id``); default: a digest of the query's prompt and medium."""
        if isinstance(prompts, str):
            raise InputError("generate_batch and prepare take a list of prompts; use generate() for one")
        if media is None or len(media) != len(prompts):
            raise InputError(f"{self.model.name} needs one {self.model.modality} per prompt")
        if ids is not None and (isinstance(ids, str) or len(ids) != len(prompts)):
            raise InputError(f"pass one id per prompt ({len(prompts)}), or none")
        prepared = []
        for index, (prompt, source) in enumerate(zip(prompts, media, strict=True)):
            medium = self._load_media(source, index).to(self.model.device)  # noise and preprocessing there
            prompt = validate_prompt(prompt)
            text = self.model.prompt_text(prompt, medium)
            with torch.no_grad():
                clean = self.model.preprocess(self.purified_clean(medium))
            key = content_key(prompt, medium) if ids is None else f"id:{ids[index]}"
            prepared.append(PreparedQuery(prompt, medium, text, clean, key))
        return prepared

    def sample(
        self,
        queries: Sequence[PreparedQuery],
        copies: range,
        *,
        clean: bool = False,
        max_new_tokens: int = 128,
        **generate_kwargs: Any,
    ) -> list[list[str]]:
        """The sampler: each query's answers to its clean input (first, when ``clean``) and to its noisy
        copies ``copies`` (copy ``i`` drawn with ``copy_seed(query_seed(config.seed, query.key), i)``). The
        candidates of all queries are drawn, encoded and answered ``batch_size`` at a time (all in one
        ``generate`` call when it is ``None``) and at most ``MAX_BATCH_BYTES`` of model inputs at a time, so
        memory is bounded by the batch size, not by the number of copies."""
        check_int("max_new_tokens", max_new_tokens, minimum=1)
        spent = {"preprocess": 0.0, "generate": 0.0}
        parts = self._sample(queries, copies, clean, spent, max_new_tokens, generate_kwargs)
        return [[generation.text for generation in part] for part in parts]

    def purified_clean(self, medium: torch.Tensor) -> torch.Tensor:
        """The clean candidate's medium [1, ...] of ``medium`` (pixels [3, H, W] or a waveform [T]): through the
        purifier, told the guard's sigma, when there is one and ``purify_clean`` is set (a purifier sees every
        candidate as carrying the guard's noise level)."""
        batch = medium.unsqueeze(0)
        if self.purifier is None or not self._config.purify_clean:
            return batch
        return self.purifier(batch, self.noise.sigma).clamp(0, 1)

    def candidates(self, query: PreparedQuery, copies: Sequence[int], *, clean: bool = True) -> list[Query]:
        """Model inputs of ``query``'s clean input (first, when ``clean``) and of its noisy copies ``copies``."""
        text = query.text
        noisy = []
        if copies:
            with torch.no_grad():
                seeds = copy_seeds(query_seed(self._config.seed, query.key), copies)
                noisy = self.noise.copies(self.model, query.medium, seeds, query.clean, purifier=self.purifier)
        return [*([Query(text, query.clean)] if clean else []), *(Query(text, m) for m in noisy)]

    # ------------------------------------------------------------------ internal
    def _sample(
        self,
        queries: Sequence[PreparedQuery],
        copies: range,
        clean: bool,
        spent: dict[str, float],
        max_new_tokens: int,
        generate_kwargs: dict[str, Any],
    ) -> list[list[Generation]]:
        """``sample`` with each answer's token counts, adding seconds to ``spent["preprocess"]`` (noise and
        encoding) and ``spent["generate"]``."""
        wanted = [*([None] if clean else []), *copies]
        tasks = [(q, c) for q in range(len(queries)) for c in wanted]
        per_candidate = max((sum(t.nbytes for t in q.clean.values()) for q in queries), default=1)
        step = min(self._config.batch_size or max(len(tasks), 1), max(1, MAX_BATCH_BYTES // max(per_candidate, 1)))
        answers: list[Generation] = []
        for start in range(0, len(tasks), step):
            began = time.perf_counter()
            chunk = tasks[start : start + step]
            inputs: list[Query] = []
            for index in dict.fromkeys(q for q, _ in chunk):
                mine = [c for q, c in chunk if q == index]
                noisy = [c for c in mine if c is not None]
                inputs += self.candidates(queries[index], noisy, clean=None in mine)
            encoded = time.perf_counter()
            answers += self.model.complete(inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
            spent["preprocess"] += encoded - began
            spent["generate"] += time.perf_counter() - encoded
        return [answers[i * len(wanted) : (i + 1) * len(wanted)] for i in range(len(queries))]

    def _embed(self, texts: list[str], known: dict[str, np.ndarray]) -> np.ndarray:
        """Embeddings [len(texts), d] of ``texts`` (at least one); each distinct text is embedded once (``known``
        keeps them across the rounds of one call): 11 identical answers cost one embedding, not eleven."""
        new = [text for text in dict.fromkeys(texts) if text not in known]
        if new:
            known.update(zip(new, self.embedder.embed(new), strict=True))
        return np.stack([known[text] for text in texts])

    def _decided(self, answers: list[str], embeddings: np.ndarray) -> bool:
        """Whether the majority cluster's share of the noisy copies answered so far is decided."""
        plan = self._config.adaptive
        assert plan is not None  # only called with adaptive sampling on
        labels = self._aggregate(answers, embeddings).labels
        majority = sum(label == 0 for i, label in enumerate(labels) if i != CLEAN_INDEX)
        return plan.decided(majority, len(answers) - 1, self._config.num_copies)

    def _aggregate(self, answers: list[str], embeddings: np.ndarray) -> ClusterOutcome:
        config = self._config
        if self._parser is not None:
            return vote(answers, [self._parser(answer) for answer in answers], prefer_index=CLEAN_INDEX)
        return aggregate(
            answers, embeddings, num_clusters=config.num_clusters, seed=config.seed, prefer_index=CLEAN_INDEX
        )

    def _load_media(self, source: Any, index: int) -> torch.Tensor:
        name = None if isinstance(source, (str, os.PathLike)) else f"{self.model.modality} {index}"
        if self.model.modality == "image":
            return load_image(source, name=name)
        sampling_rate = getattr(self.model, "sampling_rate", None)
        if sampling_rate is None:
            raise UnsupportedError(f"{self.model.name} does not declare an audio sampling rate")
        return load_audio(source, sampling_rate=sampling_rate, name=name)


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: numbers, strings, lists and dicts of them; any other object by its
    class name (e.g. a ``generate`` call's stopping criteria)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return type(value).__name__
