"""The FastAPI app: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

Every failure answers with OpenAI's error shape (``errors.py``): 400 malformed JSON, 401 missing or
wrong API key, 404 unknown model or path, 413 body or image over a limit, 422 wrong types, missing or
unsupported content, overrides out of range, 502 upstream failure; an unexpected bug is a logged 500
and never takes the server down. ``/health`` needs no key; ``/v1/*`` does when one is set.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from smoothguard import __version__
from smoothguard.errors import SmoothGuardError
from smoothguard.guard import SmoothGuard
from smoothguard.server.errors import ApiError, as_api_error
from smoothguard.server.service import GuardService
from smoothguard.server.settings import ServerSettings

logger = logging.getLogger("smoothguard.server")


def create_app(guard: SmoothGuard, settings: ServerSettings | None = None) -> FastAPI:
    """An app serving ``guard`` (its model, sigma, num_copies, ... are the defaults of every request)."""
    settings = settings or ServerSettings()
    service = GuardService(guard, settings)
    app = FastAPI(title="SmoothGuard", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    authorized = Depends(_authorization(settings.api_key))
    created = int(time.time())

    @app.exception_handler(SmoothGuardError)
    async def library_error(request: Request, exc: SmoothGuardError) -> JSONResponse:
        error = as_api_error(exc)
        if error.status >= 500 and error.status != 502:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc)
        return _error_response(error)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error_response(ApiError(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}"))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises the exception after this answer, and uvicorn logs its traceback.
        return _error_response(ApiError(500, "internal_error", f"internal error ({type(exc).__name__})"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.describe()

    @app.get("/v1/models", dependencies=[authorized])
    async def models() -> dict[str, Any]:
        entry = {"id": service.model_name, "object": "model", "created": created, "owned_by": "smoothguard"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions", dependencies=[authorized])
    async def chat_completions(request: Request) -> JSONResponse:
        body = await _read_body(request, settings.max_body_bytes)
        return JSONResponse(await run_in_threadpool(service.complete, body))

    return app


def _authorization(api_key: str | None) -> Callable[[Request], None]:
    """A dependency that requires ``Authorization: Bearer API_KEY`` (a no-op without a key)."""
    expected = f"Bearer {api_key}".encode() if api_key else None

    def check(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise ApiError(401, "invalid_api_key", "missing or wrong API key; send Authorization: Bearer KEY")

    return check


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _body_too_large(int(declared), limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _body_too_large(len(body), limit)
    return bytes(body)


def _body_too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"request body of {size:,}+ bytes is over this server's limit of {limit:,}")


def _error_response(error: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)
