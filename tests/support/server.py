"""Helpers of the server tests: inline images, chat messages, a scripted upstream endpoint."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler
from typing import Any, ClassVar

import httpx
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

#: The API key and the limits of the test servers (``tests/server``).
KEY = "sk-test-0123456789"


LIMITS = {
    "model_name": "tiny",
    "api_key": KEY,
    "max_body_bytes": 256 * 1024,
    "max_image_pixels": 80 * 80,
    "max_num_copies": 6,
    "max_sigma": 0.5,
    "max_new_tokens": 16,
    "default_max_new_tokens": 6,
    "max_prompt_tokens": 64,
}


def png_bytes(seed: int, size: tuple[int, int] = (48, 40), image_format: str = "PNG") -> bytes:
    """A random RGB image (width, height) encoded as ``image_format``."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def data_uri(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def user(*parts: dict[str, Any] | str) -> list[dict[str, Any]]:
    """One user message; strings become text parts."""
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return [{"role": "user", "content": content}]


def question(prompt: str, seed: int) -> list[dict[str, Any]]:
    """A user message with ``prompt`` and the random PNG of ``seed``."""
    return user(prompt, image_part(data_uri(png_bytes(seed))))


def post(url: str, body: Any, *, key: str | None = None, raw: bytes | None = None) -> httpx.Response:
    """POST ``body`` (or ``raw`` bytes) to ``url/v1/chat/completions``."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        headers["Content-Type"] = "application/json"
        return httpx.post(f"{url}/v1/chat/completions", content=raw, headers=headers, timeout=60)
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI-shaped error object of a failed response."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def fingerprint(completion: Any) -> tuple[Any, ...]:
    """What must not differ between a request made alone and the same request made concurrently (all but
    its timings and how many requests shared its batch)."""
    evidence = dict(completion.model_extra["smoothguard"])
    evidence.pop("timings")
    evidence.pop("batch_queries", None)
    return completion.choices[0].message.content, sorted(evidence.items())


class ScriptedUpstream:
    """An OpenAI-compatible endpoint that answers ``PROMPT|SHA8`` (the prompt and a hash of the image).

    ``fail_first``: answer this many requests per distinct prompt with ``fail_status`` first.
    ``delay``: seconds to wait, as a function of the prompt (after the gate). ``gate``: hold every request
    until this many are in flight at once (the number of requests must be a multiple of it), so that a
    concurrency bound is reached deterministically, not by sleeps that happen to overlap. ``hold``: answer nothing until
    ``release()`` (a client's timeout must fire). Records the most requests in flight.
    """

    def __init__(
        self,
        *,
        fail_first: int = 0,
        fail_status: int = 503,
        delay: Any = None,
        gate: int = 0,
        hold: bool = False,
    ) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.delay = delay or (lambda prompt: 0.0)
        self.gate = gate
        self.released = threading.Event()
        if not hold:
            self.released.set()
        self.calls: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.complete)

    def release(self) -> None:
        """Let held requests go (``hold=True``)."""
        self.released.set()

    @staticmethod
    async def _wait(condition: Any, timeout: float = 30.0) -> None:
        """Poll ``condition`` (a test's own state, set from other threads) until it holds or ``timeout``."""
        waited = 0.0
        while not condition() and waited < timeout:
            await asyncio.sleep(0.005)
            waited += 0.005

    @staticmethod
    def answer(prompt: str, png: bytes) -> str:
        return f"{prompt}|{hashlib.sha256(png).hexdigest()[:8]}"

    async def complete(self, request: Request) -> JSONResponse:
        body = await request.json()
        content = body["messages"][0]["content"]
        prompt = next(p["text"] for p in content if p["type"] == "text")
        url = next(p["image_url"]["url"] for p in content if p["type"] == "image_url")
        self.calls[prompt] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._wait(self.released.is_set)
            await self._wait(lambda: self.in_flight >= self.gate)
            await asyncio.sleep(self.delay(prompt))
        finally:
            self.in_flight -= 1
        if self.calls[prompt] <= self.fail_first:
            return JSONResponse({"error": {"message": "scripted failure"}}, status_code=self.fail_status)
        png = base64.b64decode(url.partition(",")[2])
        message = {"role": "assistant", "content": self.answer(prompt, png)}
        return JSONResponse({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})


class QuietHandler(SimpleHTTPRequestHandler):
    requested: ClassVar[list[str]] = []  # every path asked for, across instances

    def do_GET(self) -> None:
        self.requested.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


def ask(client, messages, model="tiny", **guard_options):
    options = {"return_candidates": True, **guard_options}
    return client.chat.completions.create(model=model, messages=messages, extra_body={"smoothguard": options})


def refused(response, status, code, fragment):
    """An OpenAI-shaped error of ``status`` / ``code`` whose one-line message holds ``fragment``."""
    error = error_of(response)
    assert (response.status_code, error["code"]) == (status, code), response.text
    assert fragment in error["message"], error["message"]
    assert "\n" not in error["message"] and "Traceback" not in response.text
    return error


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
