"""Request and response shapes of ``/v1/chat/completions`` (OpenAI's, plus a ``smoothguard`` object).

Requests are validated strictly (no ``"5"`` for 5). Fields OpenAI defines that do not apply
(``temperature``, ``top_p``, ``seed``, ``user``, ...) are ignored: SmoothGuard decodes greedily.
``stream``, ``n`` > 1 and ``tools`` are refused. ``messages`` are parsed by ``messages.py``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smoothguard.guard import GuardResult
from smoothguard.server.errors import ApiError

_STRICT = ConfigDict(strict=True, allow_inf_nan=False)


class GuardOptions(BaseModel):
    """The request's ``smoothguard`` object: overrides within the server's limits."""

    model_config = ConfigDict(**_STRICT, extra="forbid")

    sigma: float | None = None
    num_copies: int | None = None
    seed: int | None = None
    return_candidates: bool = False


class ChatRequest(BaseModel):
    """A chat-completions request; ``messages`` stay raw JSON objects until ``messages.parse_messages``."""

    model_config = ConfigDict(**_STRICT, extra="ignore")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream: bool | None = None
    n: int | None = None
    tools: list[Any] | None = None
    smoothguard: GuardOptions | None = None

    @classmethod
    def parse(cls, body: bytes) -> ChatRequest:
        """Validate a raw body: 400 for malformed JSON, 422 naming the first wrong field otherwise."""
        try:
            request = cls.model_validate_json(body)
        except ValidationError as exc:
            error = exc.errors()[0]
            if error["type"] == "json_invalid":
                raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error['msg']}") from None
            param = ".".join(str(part) for part in error["loc"]) or None
            where = f"{param}: " if param else "the body: "
            raise ApiError(422, "invalid_type", where + error["msg"], param=param) from None
        request.refuse_unsupported()
        return request

    def refuse_unsupported(self) -> None:
        if self.stream:
            raise ApiError(422, "unsupported", "streaming is not supported; send stream=false", param="stream")
        if self.n not in (None, 1):
            raise ApiError(422, "unsupported", "only n=1 is supported (one guarded answer)", param="n")
        if self.tools:
            raise ApiError(422, "unsupported", "tools are not supported", param="tools")

    @property
    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def completion_body(
    result: GuardResult,
    model: str,
    *,
    return_candidates: bool,
    timings: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The OpenAI ``chat.completion`` object for ``result``, with SmoothGuard's evidence in ``smoothguard``
    (``extra``: the server's own fields, e.g. where the seed came from and whether the time budget cut it)."""
    config = result.config
    evidence: dict[str, Any] = {
        "defended": config["num_copies"] > 0,
        "majority_fraction": result.majority_fraction,
        "num_candidates": len(result.candidates),
        "num_copies": config["num_copies"],
        "noise_space": config["noise_space"],
        "sigma": config["sigma"],
        "purifier": config["purifier"],
        "vote": config["vote"],
        "votes": result.votes,
        "seed": config["seed"],
        "chosen_index": result.chosen_index,
        "clean_index": result.clean_index,
        "cluster_sizes": result.cluster_sizes,
        "num_distinct": result.num_distinct,
        "embedder": config["embedder"],
        **(extra or {}),
        "timings": timings,
    }
    evidence["usage"] = _usage(result.prompt_tokens, result.completion_tokens)  # every candidate, all told
    if return_candidates:
        evidence.update(candidates=result.candidates, cluster_labels=result.cluster_labels)
    chosen = result.chosen_index
    reason = result.finish_reasons[chosen] if result.finish_reasons else "stop"
    message = {"role": "assistant", "content": result.text}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reason}],
        "usage": _usage(result.prompt_tokens[chosen : chosen + 1], result.completion_tokens[chosen : chosen + 1]),
        "smoothguard": evidence,
    }


def _usage(prompt_tokens: list[int | None], completion_tokens: list[int | None]) -> dict[str, int] | None:
    """OpenAI's ``usage`` over these candidates (``None`` when the model reported no counts)."""
    if not prompt_tokens or None in prompt_tokens or None in completion_tokens:
        return None
    prompt, completion = sum(prompt_tokens), sum(completion_tokens)  # type: ignore[arg-type]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
