"""The work behind ``/v1/chat/completions``: a request body in, a guarded ``chat.completion`` out.

A local model answers one request at a time (requests wait their turn on a lock; the wait is
reported as ``timings.queue``), so requests can never mix; once it has its turn, a request may hold
the model ``request_timeout`` seconds (``budget.py``: generation stops there and the answer says
so). A remote model answers requests concurrently: each request's copies go to the upstream through
the adapter's bounded pool. The answer embedder is shared and runs one call at a time (HF tokenizers
are not thread-safe); prompts are measured against ``max_prompt_tokens`` with a private copy of the
model's tokenizer, before any image is decoded or fetched.

Noise: each request's seed is its own ``smoothguard.seed`` when it gives one, else the guard's seed
when the server runs with a fixed seed, else a fresh draw from the OS (``secrets``), so that no two
requests share noise an attacker could learn and optimise against. The seed used is in the answer.
"""

from __future__ import annotations

import copy
import secrets
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np

from smoothguard.config import MAX_SEED
from smoothguard.embed import Embedder
from smoothguard.errors import ConfigError
from smoothguard.guard import SmoothGuard
from smoothguard.models.remote import RemoteAdapter
from smoothguard.server.errors import ApiError
from smoothguard.server.messages import parse_messages
from smoothguard.server.schemas import ChatRequest, GuardOptions, completion_body
from smoothguard.server.settings import ServerSettings

#: Prompts longer than this many characters per allowed token are refused before tokenizing.
MAX_CHARS_PER_TOKEN = 64


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
    """Answers chat requests with ``guard``'s model and settings, overridden per request within ``settings``."""

    def __init__(self, guard: SmoothGuard, settings: ServerSettings) -> None:
        config = guard.config
        if config.num_copies > settings.max_num_copies:
            raise ConfigError(f"num_copies {config.num_copies} is over the server limit {settings.max_num_copies}")
        if config.sigma > settings.max_sigma:
            raise ConfigError(f"sigma {config.sigma} is over the server limit {settings.max_sigma}")
        # The embedder is loaded now, so that the first request is not the slow one, and shared behind a
        # lock by every request's guard; an undefended server needs none.
        embedder = LockedEmbedder(guard.embedder) if settings.max_num_copies else None
        self.guard = SmoothGuard.from_config(guard.model, config, embedder=embedder)
        self.settings = settings
        self.model_name = settings.model_name or guard.model.name
        self.remote = isinstance(guard.model, RemoteAdapter)
        self._turn: AbstractContextManager[Any] = nullcontext() if self.remote else threading.Lock()
        # Counting runs outside the model's turn, so it gets its own tokenizer (and lock).
        tokenizer = None if self.remote else getattr(guard.model, "tokenizer", None)
        self._counter = None if tokenizer is None else copy.deepcopy(tokenizer)
        self._counting = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """What ``/health`` reports."""
        return {
            "status": "ok",
            "model": self.model_name,
            "mode": "proxy" if self.remote else "local",
            "defended": self.guard.config.defended,
            "num_copies": self.guard.config.num_copies,
            "sigma": self.guard.config.sigma,
            "noise_space": self.guard.config.noise_space,
            "seed_policy": "fixed" if self.settings.fixed_seed else "per_request",
            "max_prompt_tokens": self.settings.max_prompt_tokens,
            "request_timeout": self.settings.request_timeout,
        }

    def complete(self, body: bytes) -> dict[str, Any]:
        """One request body -> the response object; ``SmoothGuardError`` (``ApiError`` among them) on failure."""
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
        guard, seed_source = self.guard_for(options)
        max_new_tokens = self.max_new_tokens(request.requested_tokens)
        model = guard.model
        rate = getattr(model, "sampling_rate", None)
        chat = parse_messages(request.messages, model.modality, self.settings, rate, check_prompt=self.check_prompt)
        decoded = time.perf_counter()
        with self._turn:
            waited = time.perf_counter()
            budget = None if self.remote else _time_budget(self.settings.request_timeout)
            kwargs = {} if budget is None else budget.generate_kwargs()
            result = guard.generate_batch([chat.prompt], [chat.media], max_new_tokens=max_new_tokens, **kwargs)[0]
        timings = {"decode": decoded - started, "queue": waited - decoded}
        timings.update((key, value) for key, value in result.timings.items() if key != "batch_queries")
        extra = {
            "seed_source": seed_source,
            "time_budget_exceeded": budget is not None and budget.exceeded,
            "request_timeout": self.settings.request_timeout,
        }
        return completion_body(
            result, self.model_name, return_candidates=options.return_candidates, timings=timings, extra=extra
        )

    def guard_for(self, options: GuardOptions) -> tuple[SmoothGuard, str]:
        """The server's guard with the request's overrides, each checked against the server's limits, and
        where its seed came from: ``"request"`` (``smoothguard.seed``), ``"server"`` (the fixed seed) or
        ``"random"`` (a fresh one from the OS, the default)."""
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
        return self.guard.replace(sigma=sigma, num_copies=num_copies, seed=seed), source

    def prompt_size(self, prompt: str) -> int:
        """``prompt``'s length as ``max_prompt_tokens`` counts it: tokens of the model's tokenizer (no special
        tokens, no chat template, no media tokens), or UTF-8 bytes for a remote model (or one without a
        tokenizer)."""
        if self._counter is None:
            return len(prompt.encode("utf-8"))
        with self._counting:
            return len(self._counter(prompt, add_special_tokens=False, verbose=False)["input_ids"])

    def check_prompt(self, prompt: str) -> None:
        """413 ``prompt_too_long`` when ``prompt`` is over ``max_prompt_tokens``. A prompt of more than
        ``MAX_CHARS_PER_TOKEN`` characters per allowed token is refused without being tokenized (tokenizing
        megabytes takes seconds)."""
        limit = self.settings.max_prompt_tokens
        unit = "UTF-8 bytes" if self._counter is None else "tokens"
        if self._counter is not None and len(prompt) > limit * MAX_CHARS_PER_TOKEN:
            chars = f"{len(prompt):,} characters, more than {MAX_CHARS_PER_TOKEN} per token of"
            raise _prompt_too_long(chars, limit, unit)
        size = self.prompt_size(prompt)
        if size > limit:
            raise _prompt_too_long(f"{size:,} {unit}, over", limit, unit)

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


def _time_budget(seconds: float) -> Any:
    from smoothguard.server.budget import TimeBudget

    return TimeBudget(seconds)


def _out_of_range(name: str, value: float, allowed: str, *, too_large: bool) -> ApiError:
    code = f"{name}_too_large" if too_large else "invalid_value"
    return ApiError(
        422, code, f"smoothguard.{name} {value} is outside this server's range {allowed}", param=f"smoothguard.{name}"
    )
