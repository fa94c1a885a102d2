"""The one client for OpenAI-compatible ``/chat/completions`` endpoints (vLLM, OpenAI, SmoothGuard's own
server), used by the remote model adapter and the ``openai`` judge.

:class:`OpenAIClient` posts a chat-completions payload and returns ``choices[0]`` as a :class:`ChatReply`. It
owns what both users share: the endpoint URL (from an API base such as ``http://host:8000/v1`` or the
full ``.../chat/completions`` URL), the Authorization header, a timeout per request, retries with
exponential backoff on connection errors, timeouts, 408, 429 and 5xx, no proxy for loopback hosts, and
one error type, :class:`UpstreamError`, whose message says what went wrong.

Layer 1: imports only :mod:`smoothguard.errors`, the standard library and httpx.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from smoothguard.errors import ConfigError, SmoothGuardError

CHAT_PATH = "/chat/completions"
#: Failures worth another try: unreachable or timed out (None), 408, 429 and server errors; others fail at once.
RETRY_STATUSES = frozenset({None, 408, 429, 500, 502, 503, 504})
#: Statuses that mean the endpoint refused the API key (or its absence).
KEY_STATUSES = frozenset({401, 403})
_DETAIL_LIMIT = 300


class UpstreamError(SmoothGuardError):
    """An OpenAI-compatible endpoint failed: unreachable or timed out (``status`` None), answered with
    HTTP ``status``, or answered 200 with a body that is not a chat completion (``status`` 200).
    ``detail``: the endpoint's own error message, or the connection failure, shortened."""

    def __init__(self, message: str, status: int | None = None, *, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class ChatReply:
    """``choices[0]`` of a chat completion: the message ``content`` (``""`` when null), its
    ``finish_reason`` and the response's ``usage`` token counts (each ``None`` when the endpoint sends none)."""

    content: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is ``localhost`` or a loopback address (no proxy is used for those)."""
    return is_loopback_host(urlsplit(url).hostname or "")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback IP address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def chat_endpoint(url: str) -> str:
    """The chat-completions URL of ``url``: an API base (``.../v1``) or already the full URL."""
    base = url.rstrip("/")
    return base if base.endswith(CHAT_PATH) else base + CHAT_PATH


def error_message(response: httpx.Response, limit: int = _DETAIL_LIMIT) -> str:
    """The endpoint's error message (OpenAI's ``{"error": {"message": ...}}`` shape or raw text), shortened."""
    try:
        body = response.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("error", body)
    except (ValueError, AttributeError, KeyError, TypeError):
        message = response.text
    return str(message).strip()[:limit] or "(empty body)"


def _never() -> bool:
    return False


class OpenAIClient:
    """Posts chat completions to one endpoint; thread-safe (one connection pool for all threads).

    ``base_url``: ``http(s)://HOST[:PORT]/v1`` or the full ``.../chat/completions`` URL.
    ``api_key``: sent as ``Authorization: Bearer ...`` (None/empty: no header); never put in a message.
    ``timeout``: seconds per request (connect, read, write each). ``max_retries``: further tries after a
    retryable failure (:data:`RETRY_STATUSES`), waiting ``backoff * 2**attempt`` seconds before each.
    ``max_connections``: most connections open at once. Loopback hosts are reached without a proxy;
    others honour the usual proxy environment variables.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_connections: int = 8,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{base_url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1")
        if max_connections < 1 or max_retries < 0 or not timeout > 0 or backoff < 0:
            raise ConfigError("OpenAI client: need max_connections >= 1, max_retries >= 0, timeout > 0, backoff >= 0")
        self.endpoint = chat_endpoint(base_url)
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self._client = httpx.Client(
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=timeout,
            trust_env=not is_loopback(base_url),
            limits=httpx.Limits(max_connections=max_connections),
        )

    def chat(self, payload: dict[str, Any], *, should_stop: Callable[[], bool] | None = None) -> ChatReply:
        """POST ``payload`` (a chat-completions request body) and return ``choices[0]`` (a null content
        is ``""``), retrying transient failures. ``should_stop`` is asked before each
        retry; once it returns True the last failure is raised without further tries. Raises
        :class:`UpstreamError`."""
        stop = should_stop or _never
        attempt = 0
        while True:
            try:
                return self._post(payload)
            except UpstreamError as exc:
                if attempt == self.max_retries or exc.status not in RETRY_STATUSES or stop():
                    raise
                time.sleep(self.backoff * 2**attempt)
                if stop():
                    raise
            attempt += 1

    def close(self) -> None:
        """Close the connection pool; the client cannot be used afterwards."""
        self._client.close()

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _post(self, payload: dict[str, Any]) -> ChatReply:
        try:
            response = self._client.post(self.endpoint, json=payload)
        except httpx.TransportError as exc:
            name = type(exc).__name__
            if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
                detail = f"{name}: no answer within {self.timeout:g} s"
                message = f"{self.endpoint} did not answer within {self.timeout:g} s ({name})"
            else:
                detail = f"{name}: {exc}"
                message = f"cannot reach {self.endpoint} ({detail})"
            raise UpstreamError(message, detail=detail) from exc
        status = response.status_code
        if status != 200:
            detail = error_message(response)
            if status in KEY_STATUSES:
                message = f"{self.endpoint} refused the API key (HTTP {status}): {detail}"
            else:
                message = f"{self.endpoint} answered HTTP {status}: {detail}"
            raise UpstreamError(message, status, detail=detail)
        return self._reply(response)

    def _reply(self, response: httpx.Response) -> ChatReply:
        try:
            body = response.json()
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise UpstreamError(f"{self.endpoint} did not answer with JSON ({exc})", 200) from exc
        try:
            choice = body["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            excerpt = str(body)[:200]
            raise UpstreamError(f"{self.endpoint} sent no choices[0].message.content: {excerpt}", 200) from exc
        if content is not None and not isinstance(content, str):
            raise UpstreamError(f"{self.endpoint} sent a non-text message content: {content!r}"[:_DETAIL_LIMIT], 200)
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        return ChatReply(
            content=content or "",
            finish_reason=reason if isinstance(reason, str) else None,
            prompt_tokens=_count(usage.get("prompt_tokens")),
            completion_tokens=_count(usage.get("completion_tokens")),
        )


def _count(value: object) -> int | None:
    """A token count from a response's ``usage`` (``None`` unless a non-negative integer)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
