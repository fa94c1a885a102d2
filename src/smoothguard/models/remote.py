"""A remote OpenAI-compatible chat-completions endpoint (vLLM, SmoothGuard's own server, ...) as an adapter.

``load_model("openai:http://host:8000/v1#llava-hf/llava-1.5-7b-hf")`` returns a :class:`RemoteAdapter`:
the part after ``openai:`` up to ``#`` is the API base URL (``http`` or ``https``, the path that holds
``/chat/completions``), the part after ``#`` the model name the endpoint serves. The API key, if the
endpoint needs one, is read from ``SMOOTHGUARD_REMOTE_API_KEY`` (or passed as ``api_key=``).

How it fits the adapter contract: the remote server owns tokenisation and preprocessing, so
``preprocess`` quantises [0, 1] pixels to the 8-bit images it sends (``{"pixels": [B, 3, H, W]}``, uint8)
and ``prompt_text`` carries the prompt as its UTF-8 bytes (``input_ids`` [1, L]). Only ``pixel`` noise exists: each
candidate is clamped to [0, 1], quantised to 8 bits, encoded as a PNG ``data:`` URI and posted as
one chat completion. ``generate`` posts the candidates concurrently (at most ``max_concurrency`` in
flight per adapter) through :class:`~smoothguard.openai_client.OpenAIClient` (a timeout per request,
retries with exponential backoff on connection errors, timeouts, 408, 429 and 5xx), and returns the
answers in the order of the queries.
"""

from __future__ import annotations

import base64
import io
import os
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urlsplit

import torch
from PIL import Image

from smoothguard.errors import ConfigError, UnsupportedError
from smoothguard.models import REMOTE_PREFIX
from smoothguard.models.base import Generation, MLLMAdapter, Query
from smoothguard.models.image import to_uint8_image
from smoothguard.openai_client import OpenAIClient, UpstreamError

API_KEY_ENV = "SMOOTHGUARD_REMOTE_API_KEY"
_REMOTE_OPTIONS = ("api_key", "timeout", "max_concurrency", "max_retries", "backoff")
_GENERATE_KWARGS = ("max_new_tokens", "do_sample", "temperature", "top_p")


def parse_remote(source: str) -> tuple[str, str]:
    """``"openai:URL#MODEL"`` -> (base URL without trailing ``/``, model name); ConfigError if malformed."""
    url, _, model = source.removeprefix(REMOTE_PREFIX).partition("#")
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ConfigError(f"remote model URL: put no credentials in the URL; set {API_KEY_ENV} instead")
    if parts.scheme not in ("http", "https") or not parts.netloc or not model.strip():
        raise ConfigError(
            f"remote model {source!r} is not of the form openai:http(s)://HOST[:PORT]/v1#MODEL_NAME "
            "(e.g. openai:http://127.0.0.1:8000/v1#llava-hf/llava-1.5-7b-hf)"
        )
    return url.rstrip("/"), model.strip()


def png_data_uri(pixels: torch.Tensor) -> str:
    """Pixels [3, H, W] (uint8, or float in [0, 1]) -> ``data:image/png;base64,...`` (8-bit RGB)."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8_image(pixels)).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class RemoteAdapter(MLLMAdapter):
    """An image-text model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    ``timeout``: seconds per HTTP request; ``max_retries``: further tries after a retryable failure,
    waiting ``backoff * 2**attempt`` seconds before each; ``max_concurrency``: most requests in flight
    from this adapter, across all ``generate`` calls.
    """

    family = "openai"
    modality = "image"
    noise_spaces = ("pixel",)

    def __init__(
        self,
        base_url: str,
        model_name: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_concurrency: int = 8,
        max_retries: int = 2,
        backoff: float = 0.5,
    ) -> None:
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0 or backoff < 0:
            raise ConfigError("remote model: need max_concurrency >= 1, max_retries >= 0, timeout > 0, backoff >= 0")
        self.base_url = base_url
        self.model_name = model_name
        self.name = f"{REMOTE_PREFIX}{base_url}#{model_name}"
        self.max_retries = max_retries
        self.backoff = backoff
        self._client = OpenAIClient(
            base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_connections=max_concurrency,
        )
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="smoothguard-remote")

    def _no_local_model(self) -> Any:
        raise UnsupportedError(f"{self.name} is a remote model: no local weights or tokenizer (attacks need them)")

    model = processor = tokenizer = property(_no_local_model)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "modality": self.modality, "endpoint": self.base_url}

    # ------------------------------------------------------------- preprocessing
    def preprocess(self, media: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pixels [B, 3, H, W] in [0, 1] -> ``{"pixels": [B, 3, H, W]}``: the 8-bit images the endpoint
        receives (uint8, a quarter of float32's memory while a request's copies wait to be sent)."""
        return {"pixels": (media.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)}

    def prompt_text(self, prompt: str, media: torch.Tensor) -> dict[str, torch.Tensor]:
        """The prompt as UTF-8 bytes ``input_ids`` [1, L]; the server applies its own chat template."""
        return {"input_ids": torch.tensor([list(prompt.encode("utf-8"))], dtype=torch.long)}

    # ---------------------------------------------------------------- generation
    def complete(self, queries: Sequence[Query], **generate_kwargs: Any) -> list[Generation]:
        """Post every query concurrently; one answer per query, in order, with the token counts and finish
        reason the endpoint reports. ``generate_kwargs``:
        ``max_new_tokens`` (default 128), ``do_sample`` (default False: temperature 0), and with
        sampling ``temperature`` / ``top_p``. Raises UpstreamError once any query has failed."""
        unknown = sorted(set(generate_kwargs) - set(_GENERATE_KWARGS))
        if unknown:
            raise UnsupportedError(
                f"remote models take only {', '.join(_GENERATE_KWARGS)} as generation options, not {', '.join(unknown)}"
            )
        options = self._sampling(generate_kwargs)
        batch = _Batch()
        futures = [self._pool.submit(self._complete, self._payload(q, options), batch) for q in queries]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        errors = [error for f in futures if f in done and (error := f.exception()) is not None]
        if errors:
            raise batch.failures[0] if batch.failures else errors[0]
        return [future.result() for future in futures]

    @staticmethod
    def _sampling(kwargs: dict[str, Any]) -> dict[str, Any]:
        options: dict[str, Any] = {"max_tokens": kwargs.get("max_new_tokens", 128)}
        if not kwargs.get("do_sample", False):
            return {**options, "temperature": 0.0}
        return {**options, **{key: kwargs[key] for key in ("temperature", "top_p") if key in kwargs}}

    def _payload(self, query: Query, options: dict[str, Any]) -> dict[str, Any]:
        prompt = bytes(query.text["input_ids"][0].tolist()).decode("utf-8")
        image = {"type": "image_url", "image_url": {"url": png_data_uri(query.media["pixels"][0])}}
        content = [image, {"type": "text", "text": prompt}]
        return {"model": self.model_name, "messages": [{"role": "user", "content": content}], **options}

    def _complete(self, payload: dict[str, Any], batch: _Batch) -> Generation:
        """One chat completion with retries; not retried once another query of the same batch has failed."""
        try:
            reply = self._client.chat(payload, should_stop=batch.failed.is_set)
        except UpstreamError as exc:
            batch.fail(exc)
            raise
        return Generation(
            text=reply.content.strip(),
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            finish_reason=reply.finish_reason or "stop",
        )


class _Batch:
    """The failures of one ``generate`` call. The first is the one that stopped the batch: a query gives up
    its retries only after ``failed`` is set, which happens after that first failure is recorded."""

    def __init__(self) -> None:
        self.failed = threading.Event()
        self.failures: list[UpstreamError] = []
        self._lock = threading.Lock()

    def fail(self, error: UpstreamError) -> None:
        with self._lock:
            self.failures.append(error)
            self.failed.set()


def load_remote(source: str, *, dtype: Any = None, device: Any = None, **options: Any) -> RemoteAdapter:
    """``load_model``'s branch for ``openai:URL#MODEL``; ``options`` go to :class:`RemoteAdapter`."""
    if dtype not in (None, "auto") or device not in (None, "auto"):
        raise ConfigError(f"{source} runs on its server: drop --device/--dtype (device=, dtype=)")
    unknown = sorted(set(options) - set(_REMOTE_OPTIONS))
    if unknown:
        raise ConfigError(f"remote models take the options {', '.join(_REMOTE_OPTIONS)}, not {', '.join(unknown)}")
    base_url, model_name = parse_remote(source)
    options.setdefault("api_key", os.environ.get(API_KEY_ENV) or None)
    return RemoteAdapter(base_url, model_name, **options)
