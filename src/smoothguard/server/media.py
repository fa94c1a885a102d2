"""Images and audio clips of a request -> tensors, within the server's limits.

Images come as ``data:image/png;base64,...`` / ``data:image/jpeg;base64,...`` URIs, or as ``http(s)``
URLs under an allowed prefix (``urls.py``: normalised first, and the normal form is what is fetched,
without redirects, at most ``max_body_bytes``); the pixel count is checked from the header before any
pixel is decoded. Audio comes as base64 with its ``format`` (``input_audio``). Failures raise
``ApiError``: 413 for sizes over a limit, 422 otherwise.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import httpx
import soundfile as sf
import torch
from PIL import Image

from smoothguard.errors import InputError
from smoothguard.inputs import load_audio, load_image
from smoothguard.openai_client import is_loopback
from smoothguard.server.errors import ApiError
from smoothguard.server.settings import ServerSettings
from smoothguard.server.urls import UrlRefused

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}
AUDIO_FORMATS = ("wav", "flac", "ogg", "mp3")


def decode_image(url: str, settings: ServerSettings, param: str) -> torch.Tensor:
    """An ``image_url`` -> float32 pixels [3, H, W] in [0, 1]."""
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        mime, *options = header.removeprefix("data:").lower().split(";")
        if mime not in IMAGE_TYPES:
            raise ApiError(
                422, "unsupported_image_type", f"{param}: image type {mime!r}; send PNG or JPEG", param=param
            )
        if "base64" not in options:
            raise ApiError(422, "invalid_image", f"{param}: the data URI must be base64 (data:{mime};base64,...)")
        raw = _base64(data, param)
    elif url.partition(":")[0].lower() in ("http", "https"):
        raw = _fetch(_allowed_url(url, settings, param), settings, param)
    else:
        raise ApiError(422, "invalid_image", f"{param}: image_url must be a data: URI (base64 PNG/JPEG)", param=param)
    return _pixels(raw, settings.max_image_pixels, param)


def decode_audio(data: str, audio_format: str, sampling_rate: int, param: str) -> torch.Tensor:
    """An ``input_audio`` -> float32 mono waveform [T] in [-1, 1] at ``sampling_rate``."""
    if audio_format not in AUDIO_FORMATS:
        raise ApiError(
            422,
            "unsupported_audio_format",
            f"{param}: audio format {audio_format!r}; send one of {', '.join(AUDIO_FORMATS)}",
            param=param,
        )
    raw = _base64(data, param)
    try:
        samples, rate = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
        # [T, C] from soundfile: averaged here, where the layout is known (load_audio would have to guess
        # it from the shape, and cannot for clips of 8 samples or fewer, nor for more than 8 channels).
        return load_audio((samples.mean(axis=1), int(rate)), sampling_rate=sampling_rate, name=param)
    except InputError as exc:
        raise ApiError(422, "invalid_audio", str(exc), param=param) from None
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
        raise ApiError(
            422, "invalid_audio", f"{param}: not readable {audio_format} audio ({exc})", param=param
        ) from None


def _base64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_base64", f"{param}: the data is not valid base64", param=param) from None


def _allowed_url(url: str, settings: ServerSettings, param: str) -> str:
    """The normalised form of an ``http(s)`` image URL, to fetch; 422 ``image_url_not_allowed`` otherwise."""
    if not settings.allow_url_prefixes:
        raise ApiError(
            422,
            "image_url_not_allowed",
            f"{param}: this server does not fetch remote images; send the image inline as a data: URI "
            "(base64 PNG or JPEG), or start the server with --allow-url-prefix",
            param=param,
        )
    try:
        return settings.allowed_url(url)
    except UrlRefused as exc:
        raise ApiError(
            422,
            "image_url_not_allowed",
            f"{param}: this image URL is not fetched: {exc}; send the image inline as a data: URI (base64 PNG or JPEG)",
            param=param,
        ) from None


def _fetch(url: str, settings: ServerSettings, param: str) -> bytes:
    """GET an allowed image URL: 200 only, no redirects, at most ``max_body_bytes``."""
    chunks: list[bytes] = []
    size = 0
    try:
        with (
            httpx.Client(timeout=settings.fetch_timeout, trust_env=not is_loopback(url)) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise ApiError(
                    422,
                    "image_fetch_failed",
                    f"{param}: fetching the image URL gave HTTP {response.status_code}",
                    param=param,
                )
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > settings.max_body_bytes:
                    raise ApiError(
                        413,
                        "image_too_large",
                        f"{param}: the image at the URL is over {settings.max_body_bytes:,} bytes",
                        param=param,
                    )
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise ApiError(
            422, "image_fetch_failed", f"{param}: cannot fetch the image URL ({type(exc).__name__})", param=param
        ) from None
    return b"".join(chunks)


def _pixels(raw: bytes, max_pixels: int, param: str) -> torch.Tensor:
    """Encoded PNG/JPEG bytes -> pixels; the size is checked before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(param, max_pixels) from None
    except (OSError, SyntaxError, ValueError):
        raise ApiError(422, "invalid_image", f"{param}: not a readable PNG or JPEG image", param=param) from None
    if image.format not in IMAGE_TYPES.values():
        raise ApiError(
            422, "unsupported_image_type", f"{param}: image is {image.format}; send PNG or JPEG", param=param
        )
    width, height = image.size
    if width * height > max_pixels:
        raise _too_large(param, max_pixels, f" ({width}x{height} = {width * height:,})")
    try:
        return load_image(image, name=param, max_pixels=max_pixels)
    except InputError as exc:
        raise ApiError(422, "invalid_image", str(exc), param=param) from None


def _too_large(param: str, max_pixels: int, size: str = "") -> ApiError:
    return ApiError(
        413,
        "image_too_large",
        f"{param}: image has more pixels{size} than this server's limit of {max_pixels:,}",
        param=param,
    )
