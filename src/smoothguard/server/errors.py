"""HTTP errors as ``SmoothGuardError`` subclasses, and the mapping of every library error to an HTTP answer.

Bodies follow OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, so that OpenAI
clients raise their usual exceptions; 502s add ``upstream_status`` (``null``: upstream unreachable).
"""

from __future__ import annotations

from typing import Any

from smoothguard.errors import ConfigError, InputError, SmoothGuardError, UnsupportedError
from smoothguard.openai_client import UpstreamError


class ApiError(SmoothGuardError):
    """An error with its HTTP ``status``, a machine-readable ``code`` and the request field at fault."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        kind = "authentication_error" if self.status == 401 else "invalid_request_error"
        kind = kind if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


class UpstreamApiError(ApiError):
    """502: the upstream endpoint failed; ``upstream_status`` is its HTTP status (None: unreachable)."""

    def __init__(self, message: str, upstream_status: int | None) -> None:
        super().__init__(502, "upstream_error", message)
        self.upstream_status = upstream_status

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"]["upstream_status"] = self.upstream_status
        return body


def as_api_error(exc: SmoothGuardError) -> ApiError:
    """The HTTP form of a library error: bad inputs/options -> 422, upstream failures -> 502, else 500."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UpstreamError):
        return UpstreamApiError(str(exc), exc.status)
    if isinstance(exc, InputError):
        return ApiError(422, "invalid_input", str(exc))
    if isinstance(exc, ConfigError):
        return ApiError(422, "invalid_value", str(exc))
    if isinstance(exc, UnsupportedError):
        return ApiError(422, "unsupported", str(exc))
    return ApiError(500, "internal_error", str(exc))
