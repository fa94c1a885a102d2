"""The work behind ``/v1/chat/completions``: a request body in, a guarded ``chat.completion`` out.

Each request is parsed, checked against the server's limits and decoded in its own thread; a request
that fails there fails alone, before it meets any other. Then:

- A local model answers in batches (``batching.py``): requests that share the settings a batch must
  share (``sigma``, ``num_copies``, ``max_tokens``) go, at most ``max_batch_queries`` of them, into ONE
  ``guard.generate_batch`` call, the batch closing when full or ``batch_window_ms`` after the last one
  joined (at most ``max_batch_queries`` windows in all); one worker thread runs one batch at a time,
  so the model never runs two at once. Each answer equals the
  request's answer alone: the prompts are left-padded with an attention mask (``MLLMAdapter.collate``)
  and a request's noise is a function of its own seed and content only (below). When a batch raises,
  each of its requests is answered again alone, so an input that makes its batch fail fails alone.
  A batch's time budget (``budget.py``) starts when the batch does and counts every second the batch
  holds the model against each member (a member answered again alone after a failed batch keeps what
  that batch cost it); ``timings.queue`` is the wait for the first batch, the window included.
  ``max_batch_queries`` 1 answers requests one at a time in arrival order.
- A remote model answers requests concurrently, each with its own ``generate_batch`` call: each
  request's copies go to the upstream through the adapter's bounded pool (the upstream batches).

The answer embedder is shared and runs one call at a time (HF tokenizers are not thread-safe);
prompts are measured against ``max_prompt_tokens``, and checked for NUL characters and the model's
special tokens, with a private copy of the model's tokenizer before any image is decoded or fetched.

Noise: each request's seed S is its own ``smoothguard.seed`` when it gives one, else the guard's seed
when the server runs with a fixed seed, else a fresh draw from the OS (``secrets``), so that no two
requests share noise an attacker could learn and optimise against. Every request is answered by the
server's one guard (its config, seed included, is shared, so requests can share a batch); S goes into
the name of the request's noise instead, :func:`request_noise_id`: ``request-seed:S/`` followed by
the content digest of the prompt and the decoded medium (``noise.content_key``), the query id of
``generate_batch(..., ids=...)``. Copy ``i`` of a request is therefore seeded from the guard's seed, S and
the request's content, whatever its batch-mates. The seed S is in the answer (``seed``, with
``seed_source``); the same request sent again with ``smoothguard.seed`` S gets the same answer, and the
library gives it too: ``guard.generate(prompt, image=pixels, query_id=request_noise_id(S, prompt,
pixels))`` with the server's guard settings.
"""

from __future__ import annotations

import copy
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smoothguard.embed import Embedder
from smoothguard.errors import MAX_SEED, ConfigError
from smoothguard.guard import GuardResult, SmoothGuard
from smoothguard.inputs import validate_prompt
from smoothguard.models.remote import RemoteAdapter
from smoothguard.noise import content_key
from smoothguard.server.batching import Batcher
from smoothguard.server.errors import ApiError
from smoothguard.server.messages import parse_messages
from smoothguard.server.schemas import ChatRequest, GuardOptions, completion_body
from smoothguard.server.settings import ServerSettings

#: Prompts longer than this many characters per allowed token are refused before tokenizing.
MAX_CHARS_PER_TOKEN = 64


def request_noise_id(seed: int, prompt: str, medium: torch.Tensor) -> str:
    """The query id a request with seed ``seed`` is answered under (``generate_batch(..., ids=[...])``):
    ``"request-seed:SEED/"`` + ``noise.content_key(prompt, medium)``, ``medium`` being the decoded pixels
    [3, H, W] in [0, 1] or waveform [T]."""
    return f"request-seed:{seed}/{content_key(prompt, medium)}"


@dataclass(frozen=True)
class _Group:
    """What the requests of one batch share."""

    sigma: float
    num_copies: int
    max_new_tokens: int


@dataclass
class _Job:
    """One decoded request waiting for (or in) a batch. ``turn``: ``perf_counter`` when its first batch
    started; ``held``: seconds its batches have held the model so far."""

    prompt: str
    medium: torch.Tensor
    key: str
    turn: float | None = None
    held: float = 0.0


@dataclass
class _Answer:
    result: GuardResult
    budget_exceeded: bool
    turn: float


class LockedEmbedder:
    """``embedder`` behind a lock, for concurrent requests."""

    def __init__(self, embedder: Embedder) -> None:
        self.name = embedder.name
        self._embedder = embedder
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self._embedder.embed(texts)


class GuardService:
    """Answers chat requests with ``guard``'s model and settings, overridden per request within ``settings``;
    a local model's requests in batches (``settings.batch_window_ms``, ``settings.max_batch_queries``)."""

    def __init__(self, guard: SmoothGuard, settings: ServerSettings) -> None:
        config = guard.config
        if config.num_copies > settings.max_num_copies:
            raise ConfigError(f"num_copies {config.num_copies} is over the server limit {settings.max_num_copies}")
        if config.sigma > settings.max_sigma:
            raise ConfigError(f"sigma {config.sigma} is over the server limit {settings.max_sigma}")
        # The embedder is loaded now, so that the first request is not the slow one, and shared behind a
        # lock by every request's guard; an undefended server needs none.
        embedder = LockedEmbedder(guard.embedder) if settings.max_num_copies else None
        self.guard = SmoothGuard.from_config(guard.model, config, embedder=embedder, purifier=guard.purifier)
        self.settings = settings
        self.model_name = settings.model_name or guard.model.name
        self.remote = isinstance(guard.model, RemoteAdapter)
        self.batcher = None
        if not self.remote:
            window, most = settings.batch_window_ms / 1000, settings.max_batch_queries
            self.batcher = Batcher(self._answer_batch, window=window, max_items=most)
        # Prompt checks run in the requests' threads, beside the batch that holds the model, so they get
        # their own copy of the tokenizer (and a lock): the counter, and an adapter that uses it.
        tokenizer = None if self.remote else getattr(guard.model, "tokenizer", None)
        self._counter = None if tokenizer is None else copy.deepcopy(tokenizer)
        self._checker = None
        if self._counter is not None and hasattr(guard.model, "checked_prompt"):
            self._checker = copy.copy(guard.model)
            self._checker.tokenizer = self._counter
        self._counting = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """What ``/health`` reports."""
        batching = None
        if self.batcher is not None:
            batching = {"window_ms": self.settings.batch_window_ms, "max_queries": self.settings.max_batch_queries}
        return {
            "status": "ok",
            "model": self.model_name,
            "mode": "proxy" if self.remote else "local",
            "defended": self.guard.config.defended,
            "num_copies": self.guard.config.num_copies,
            "sigma": self.guard.config.sigma,
            "noise_space": self.guard.config.noise_space,
            "purifier": self.guard.config.purifier,
            "vote": self.guard.config.vote,
            "seed_policy": "fixed" if self.settings.fixed_seed else "per_request",
            "max_prompt_tokens": self.settings.max_prompt_tokens,
            "request_timeout": self.settings.request_timeout,
            "batching": batching,
        }

    def complete(self, body: bytes) -> dict[str, Any]:
        """One request body -> the response object; ``SmoothGuardError`` (``ApiError`` among them) on failure.
        Blocks until the request's batch has answered it (a local model)."""
        started = time.perf_counter()
        request = ChatRequest.parse(body)
        if request.model not in (None, self.model_name):
            raise ApiError(
                404,
                "model_not_found",
                f"model {request.model!r} is not served here; use {self.model_name!r}",
                param="model",
            )
        options = request.smoothguard or GuardOptions()
        guard, seed, seed_source = self.guard_for(options)
        max_new_tokens = self.max_new_tokens(request.requested_tokens)
        model = guard.model
        rate = getattr(model, "sampling_rate", None)
        chat = parse_messages(request.messages, model.modality, self.settings, rate, check_prompt=self.check_prompt)
        job = _Job(chat.prompt, chat.media, request_noise_id(seed, chat.prompt, chat.media))
        decoded = time.perf_counter()
        if self.batcher is None:
            results = guard.generate_batch([job.prompt], [job.medium], ids=[job.key], max_new_tokens=max_new_tokens)
            answer = _Answer(results[0], False, decoded)
        else:
            group = _Group(guard.config.sigma, guard.config.num_copies, max_new_tokens)
            answer = self.batcher.submit(group, job).result()
        result = answer.result
        timings = {"decode": decoded - started, "queue": answer.turn - decoded}
        timings.update((key, value) for key, value in result.timings.items() if key != "batch_queries")
        extra = {
            "seed": seed,
            "seed_source": seed_source,
            "batch_queries": result.timings.get("batch_queries", 1),
            "time_budget_exceeded": answer.budget_exceeded,
            "request_timeout": self.settings.request_timeout,
        }
        return completion_body(
            result, self.model_name, return_candidates=options.return_candidates, timings=timings, extra=extra
        )

    def guard_for(self, options: GuardOptions) -> tuple[SmoothGuard, int, str]:
        """The server's guard with the request's ``sigma`` and ``num_copies`` overrides, each checked against
        the server's limits, the request's noise seed, and where it came from: ``"request"``
        (``smoothguard.seed``), ``"server"`` (the fixed seed) or ``"random"`` (a fresh one from the OS, the
        default). The guard keeps the server's seed (the seed goes into the request's noise id)."""
        limits, config = self.settings, self.guard.config
        num_copies = config.num_copies if options.num_copies is None else options.num_copies
        sigma = config.sigma if options.sigma is None else options.sigma
        if options.seed is not None:
            seed, source = options.seed, "request"
        elif limits.fixed_seed:
            seed, source = config.seed, "server"
        else:
            seed, source = secrets.randbelow(MAX_SEED), "random"
        if not 0 <= num_copies <= limits.max_num_copies:
            note = " (it runs with --no-defense)" if limits.max_num_copies == 0 else ""
            raise _out_of_range("num_copies", num_copies, f"0..{limits.max_num_copies}{note}", too_large=num_copies > 0)
        if not 0 <= sigma <= limits.max_sigma:
            raise _out_of_range("sigma", sigma, f"0..{limits.max_sigma:g}", too_large=sigma > 0)
        if not 0 <= seed < MAX_SEED:
            raise _out_of_range("seed", seed, "0..2**32-1", too_large=False)
        guard = self.guard
        if (sigma, num_copies) != (config.sigma, config.num_copies):
            guard = self.guard.replace(sigma=sigma, num_copies=num_copies)
        return guard, seed, source

    def _answer_batch(self, group: _Group, jobs: list[_Job]) -> list[_Answer]:
        """One ``generate_batch`` call for ``jobs`` (the batcher's worker thread), under one time budget that
        started with the batch, less what earlier batches of these jobs held the model."""
        guard = self.guard
        if (group.sigma, group.num_copies) != (guard.config.sigma, guard.config.num_copies):
            guard = guard.replace(sigma=group.sigma, num_copies=group.num_copies)
        began = time.perf_counter()
        for job in jobs:
            job.turn = began if job.turn is None else job.turn
        budget = _time_budget(self.settings.request_timeout, held=max(job.held for job in jobs))
        try:
            results = guard.generate_batch(
                [job.prompt for job in jobs],
                [job.medium for job in jobs],
                ids=[job.key for job in jobs],
                max_new_tokens=group.max_new_tokens,
                **budget.generate_kwargs(),
            )
        finally:
            spent = time.perf_counter() - began
            for job in jobs:
                job.held += spent
        return [
            _Answer(result, budget.exceeded and _cut_short(result, group.max_new_tokens), job.turn or began)
            for job, result in zip(jobs, results, strict=True)
        ]

    def prompt_size(self, prompt: str) -> int:
        """``prompt``'s length as ``max_prompt_tokens`` counts it: tokens of the model's tokenizer (no special
        tokens, no chat template, no media tokens), or UTF-8 bytes for a remote model (or one without a
        tokenizer)."""
        if self._counter is None:
            return len(prompt.encode("utf-8"))
        with self._counting:
            return len(self._counter(prompt, add_special_tokens=False, verbose=False)["input_ids"])

    def check_prompt(self, prompt: str) -> None:
        """413 ``prompt_too_long`` when ``prompt`` is over ``max_prompt_tokens``; then ``InputError`` (422
        ``invalid_input``) for what the guard would refuse (``inputs.validate_prompt``, and the model's special
        tokens: ``checked_prompt``), so that such a request fails alone, before it joins a batch. A prompt of
        more than ``MAX_CHARS_PER_TOKEN`` characters per allowed token is refused without being tokenized
        (tokenizing megabytes takes seconds)."""
        limit = self.settings.max_prompt_tokens
        unit = "UTF-8 bytes" if self._counter is None else "tokens"
        if self._counter is not None and len(prompt) > limit * MAX_CHARS_PER_TOKEN:
            chars = f"{len(prompt):,} characters, more than {MAX_CHARS_PER_TOKEN} per token of"
            raise _prompt_too_long(chars, limit, unit)
        size = self.prompt_size(prompt)
        if size > limit:
            raise _prompt_too_long(f"{size:,} {unit}, over", limit, unit)
        validate_prompt(prompt)
        if self._checker is not None:
            with self._counting:
                self._checker.checked_prompt(prompt)

    def max_new_tokens(self, requested: int | None) -> int:
        if requested is None:
            return self.settings.default_max_new_tokens
        if not 1 <= requested <= self.settings.max_new_tokens:
            raise ApiError(
                422,
                "max_tokens_too_large" if requested > self.settings.max_new_tokens else "invalid_value",
                f"max_tokens {requested} is outside this server's range 1..{self.settings.max_new_tokens}",
                param="max_tokens",
            )
        return requested


def _prompt_too_long(size: str, limit: int, unit: str) -> ApiError:
    return ApiError(
        413,
        "prompt_too_long",
        f"the prompt is {size} this server's limit of {limit:,} {unit} (--max-prompt-tokens); shorten it",
        param="messages",
    )


def _time_budget(seconds: float, *, held: float = 0.0) -> Any:
    """A budget of ``seconds`` from now, less ``held`` seconds already spent."""
    from smoothguard.server.budget import TimeBudget

    return TimeBudget(seconds, started=time.time() - held)


def _cut_short(result: GuardResult, max_new_tokens: int) -> bool:
    """Whether the time budget cut one of ``result``'s candidates: one stopped for ``length`` before
    ``max_new_tokens`` (a batch's budget is shared, and cuts only the rows still generating)."""
    return any(
        reason == "length" and tokens is not None and tokens < max_new_tokens
        for reason, tokens in zip(result.finish_reasons, result.completion_tokens, strict=True)
    )


def _out_of_range(name: str, value: float, allowed: str, *, too_large: bool) -> ApiError:
    code = f"{name}_too_large" if too_large else "invalid_value"
    return ApiError(
        422, code, f"smoothguard.{name} {value} is outside this server's range {allowed}", param=f"smoothguard.{name}"
    )
