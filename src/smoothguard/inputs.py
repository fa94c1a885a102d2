"""Load and validate user inputs: images, audio clips and prompts.

Each loader turns whatever the caller holds (a file path, a PIL image, a numpy array, a torch tensor)
into one canonical form, or raises :class:`~smoothguard.errors.InputError` naming the input:

- :func:`load_image`: float32 ``[3, H, W]`` RGB in ``[0, 1]``. Transparency is composited onto
  white, exactly as ``transformers.image_transforms.convert_to_rgb`` does, so we agree with the HF
  image processors.
- :func:`load_audio`: float32 mono ``[T]`` in ``[-1, 1]`` at the requested sampling rate (Hz).
- :func:`validate_prompt`: a non-empty ``str``.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import soundfile as sf
import torch
from PIL import Image, ImageOps

from smoothguard.errors import DEFAULT_MAX_FILE_BYTES, InputError, check_file

DEFAULT_MAX_PIXELS: int = 64_000_000
"""Refuse images with more pixels than this (decompression bombs)."""
MAX_ASPECT_RATIO: int = 200
"""Refuse images whose long side is more than this many times the short side: resizing the short side to
a model's input (LLaVA: 336 px) would blow the long side up (a 3x20000 image to 336x2,240,000); Qwen-VL's
processor has the same limit."""

PathSource = str | os.PathLike[str]
ImageSource = PathSource | Image.Image | np.ndarray | torch.Tensor
AudioArray = np.ndarray | torch.Tensor
AudioSource = PathSource | AudioArray | tuple[AudioArray, int]

_Array = TypeVar("_Array", np.ndarray, torch.Tensor)

_IMAGE_CHANNELS = (1, 3, 4)
_MAX_AUDIO_CHANNELS = 8
_MIN_SIDE = 2
# What PIL raises for files that are not images, truncated or corrupt (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)
_AUDIO_READ_ERRORS = (sf.SoundFileError, RuntimeError, TypeError, ValueError, EOFError)


# ----------------------------------------------------------------------------------------------- images


def load_image(
    source: ImageSource,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> torch.Tensor:
    """Any image -> float32 tensor ``[3, H, W]`` in ``[0, 1]``, RGB.

    ``source`` is one of:

    - a file path (``str`` / ``os.PathLike``), or a ``PIL.Image.Image``: EXIF orientation is applied,
      the first frame of an animation is used; 8-bit modes are converted with PIL; 16-bit grayscale
      (``I;16``, ``I``) is scaled by 65535 at full precision (PIL itself reads 16-bit *colour* PNGs
      as 8-bit RGB); ``F`` must already be in ``[0, 1]``.
      Truncated or corrupt files and images over ``max_pixels`` are refused before decoding.
    - a numpy array ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` (C in 1, 3, 4; channel-first only when
      the shape is unambiguous), optionally with a leading batch dimension of one.
    - a torch tensor ``[C, H, W]`` or ``[H, W]`` (channel-first), optionally ``[1, C, H, W]``. A float
      tensor keeps its device and its autograd graph (attacks differentiate through this function).

    Pixel dtypes: uint8 (divided by 255), uint16 (by 65535), bool, or float already in ``[0, 1]``.
    Four channels are RGBA, composited onto white (in float for arrays and tensors). ``name`` labels
    the input in error messages. PIL's own ``Image.MAX_IMAGE_PIXELS`` guard applies too: its
    decompression-bomb warning is raised as an error while a file is opened.
    """
    if isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        path = check_file(source, label, kind="image", max_file_bytes=max_file_bytes)
        with _decoding(label), Image.open(path) as image:
            return _pil_to_tensor(image, label, max_pixels)
    if isinstance(source, Image.Image):
        label = name or getattr(source, "filename", "") or "PIL image"
        with _decoding(label):
            return _pil_to_tensor(source, label, max_pixels)
    if isinstance(source, (np.ndarray, torch.Tensor)):
        label = name or f"image {'array' if isinstance(source, np.ndarray) else 'tensor'}"
        return _array_to_tensor(source, label, max_pixels)
    raise InputError(
        f"{name or 'image'}: unsupported type {type(source).__name__}; "
        "pass a file path, a PIL image, a numpy array or a torch tensor"
    )


@contextmanager
def _decoding(label: str) -> Iterator[None]:
    """Turn PIL's failures (and its decompression-bomb warning) into ``InputError`` naming ``label``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InputError(
                f"{label}: refused as a possible decompression bomb ({exc}); "
                "downscale the image, or only if you trust it raise PIL.Image.MAX_IMAGE_PIXELS"
            ) from exc
        except _DECODE_ERRORS as exc:
            raise InputError(
                f"{label}: not a readable image ({exc}); check that the file is a complete, valid image"
            ) from exc


def _pil_to_tensor(image: Image.Image, label: str, max_pixels: int) -> torch.Tensor:
    """PIL image (possibly still lazy) -> float32 ``[3, H, W]`` in ``[0, 1]``; size is checked first."""
    _check_image_size(*image.size, label, max_pixels)  # header only: no pixel decoded yet
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return _high_depth_gray(image, label).expand(3, -1, -1).contiguous()
    rgb = np.asarray(_composite_on_white(image, label), dtype=np.float32) / 255
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def _composite_on_white(image: Image.Image, label: str) -> Image.Image:
    """8-bit PIL image -> RGB, transparency blended onto white as transformers' ``convert_to_rgb`` does."""
    try:
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
        return image.convert("RGB")
    except ValueError as exc:
        raise InputError(
            f"{label}: image mode {image.mode} cannot be converted to RGB ({exc}); save it as RGB first"
        ) from exc


def _high_depth_gray(image: Image.Image, label: str) -> torch.Tensor:
    """16/32-bit integer or float grayscale PIL image -> float32 ``[H, W]`` in ``[0, 1]``.

    Integer codes are divided by 65535 (16-bit full scale), never squeezed through 8 bits; pixels
    equal to a PNG ``tRNS`` gray value are transparent and become white.
    """
    codes = np.asarray(image)
    if image.mode == "I":
        if codes.min() < 0 or codes.max() > np.iinfo(np.uint16).max:
            raise InputError(f"{label}: 32-bit integer image with values outside 0..65535; convert it to 8 or 16 bit")
        codes = codes.astype(np.uint16)
    gray = _unit_pixels(codes, label)
    transparency = image.info.get("transparency")
    if isinstance(transparency, int):
        gray[torch.from_numpy(codes == transparency)] = 1.0
    return gray


def _array_to_tensor(values: np.ndarray | torch.Tensor, label: str, max_pixels: int) -> torch.Tensor:
    """Numpy array or tensor image -> float32 ``[3, H, W]`` (graph and device kept for float tensors)."""
    chw = _channels_first(_drop_batch_of_one(values, label), label)
    _check_image_size(chw.shape[-1], chw.shape[-2], label, max_pixels)
    pixels = _unit_pixels(chw, label)
    if pixels.shape[0] == 1:
        return pixels.expand(3, -1, -1).contiguous()
    if pixels.shape[0] == 4:
        alpha = pixels[3:]
        return pixels[:3] * alpha + (1 - alpha)
    return pixels


def _drop_batch_of_one(values: _Array, label: str) -> _Array:
    """``[1, ...]`` 4-D batch -> its single image; a larger batch is refused."""
    if values.ndim == 4:
        if values.shape[0] != 1:
            raise InputError(
                f"{label}: got a batch of {values.shape[0]} images (shape {tuple(values.shape)}); "
                "pass one image per call"
            )
        return values[0]
    return values


def _channels_first(values: _Array, label: str) -> _Array:
    """Image layout -> ``[C, H, W]``.

    Arrays may be ``[H, W]``, ``[H, W, C]`` or, when unambiguous, ``[C, H, W]``; tensors are
    ``[H, W]`` or ``[C, H, W]`` (channel-first, the torch convention).
    """
    shape = tuple(values.shape)
    expected = "expected [H, W], [H, W, C] or [C, H, W] with C in (1, 3, 4)"
    if values.ndim == 2:
        return values[None]
    if values.ndim == 3 and isinstance(values, torch.Tensor):
        if shape[0] in _IMAGE_CHANNELS:
            return values
        expected = "expected a channel-first tensor [C, H, W] with C in (1, 3, 4); use .permute(2, 0, 1)"
    elif values.ndim == 3:
        last, first = shape[-1] in _IMAGE_CHANNELS, shape[0] in _IMAGE_CHANNELS
        if last and first:
            raise InputError(
                f"{label}: array shape {shape} is ambiguous (H x W x C or C x H x W); "
                "pass it as a channel-first torch tensor or a PIL image"
            )
        if last:
            return values.transpose(2, 0, 1)
        if first:
            return values
    raise InputError(f"{label}: shape {shape} is not an image; {expected} (one image per call)")


def _check_image_size(width: int, height: int, label: str, max_pixels: int) -> None:
    """Refuse images smaller than 2x2, longer than ``MAX_ASPECT_RATIO`` times their width (or the other way
    round), or with more than ``max_pixels`` pixels."""
    if width < _MIN_SIDE or height < _MIN_SIDE:
        raise InputError(f"{label}: image is {width}x{height} pixels; images must be at least {_MIN_SIDE}x{_MIN_SIDE}")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InputError(
            f"{label}: image is {width}x{height} pixels, an aspect ratio over {MAX_ASPECT_RATIO}:1; crop or pad it "
            "(resizing its short side to the model's input would make it enormous)"
        )
    if width * height > max_pixels:
        raise InputError(
            f"{label}: image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (max_pixels); downscale it, or raise max_pixels if you trust the file"
        )


def _unit_pixels(values: np.ndarray | torch.Tensor, label: str) -> torch.Tensor:
    """Pixel values -> float32 tensor in ``[0, 1]``: uint8 / 255, uint16 / 65535, bool, or checked floats.

    Float tensors keep their device and autograd graph; everything else becomes a CPU tensor.
    """
    if isinstance(values, torch.Tensor) and values.is_floating_point():
        _check_float_range(values, 0.0, 1.0, label, "divide 8-bit values by 255 (16-bit by 65535) first")
        return values.to(torch.float32)
    codes = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    if codes.dtype.kind == "b":
        scaled = codes.astype(np.float32)
    elif codes.dtype.kind == "u" and codes.dtype.itemsize <= 2:
        scaled = codes.astype(np.float32) / np.iinfo(codes.dtype).max
    elif codes.dtype.kind == "f":
        _check_float_range(codes, 0.0, 1.0, label, "divide 8-bit values by 255 (16-bit by 65535) first")
        scaled = codes.astype(np.float32)
    else:
        raise InputError(
            f"{label}: unsupported pixel dtype {codes.dtype}; "
            "use uint8 (0..255), uint16 (0..65535), bool, or float in [0, 1]"
        )
    return torch.from_numpy(np.ascontiguousarray(scaled))


def _check_float_range(values: np.ndarray | torch.Tensor, low: float, high: float, label: str, fix: str) -> None:
    """Refuse NaN / inf and values outside ``[low, high]``; reads a detached view (no autograd)."""
    if isinstance(values, torch.Tensor):
        values = values.detach()
        finite = bool(torch.isfinite(values).all())
    else:
        finite = bool(np.isfinite(values).all())
    if not finite:
        raise InputError(f"{label}: contains NaN or infinite values; pass finite numbers")
    minimum, maximum = float(values.min()), float(values.max())
    if minimum < low or maximum > high:
        raise InputError(f"{label}: values out of [{low:g}, {high:g}] (min {minimum:.4g}, max {maximum:.4g}); {fix}")


# ------------------------------------------------------------------------------------------------ audio


def load_audio(
    source: AudioSource,
    *,
    sampling_rate: int,
    name: str | None = None,
    max_seconds: float = 600.0,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> torch.Tensor:
    """Any audio -> float32 mono waveform ``[T]`` in ``[-1, 1]`` at ``sampling_rate`` Hz.

    ``source`` is one of:

    - a file path readable by ``soundfile`` (WAV, FLAC, OGG, ...): integer PCM is scaled by soundfile.
    - a numpy array or torch tensor already at ``sampling_rate``: ``[T]``, ``[C, T]`` or ``[T, C]``
      with C <= 8 channels. Floats must be in ``[-1, 1]``; int8/16/32 PCM is divided by its full scale
      (int16 by 32768), uint8 is 8-bit PCM centred on 128.
    - a tuple ``(array_or_tensor, rate_hz)``.

    Channels are averaged to mono; a different rate is resampled with ``scipy.signal.resample_poly``
    (result clipped to ``[-1, 1]``, returned on the CPU). A float tensor that needs no resampling keeps
    its device and autograd graph. Clips longer than ``max_seconds`` are refused; the model adapter
    decides about shorter limits.
    """
    target_rate = _checked_rate(sampling_rate, "sampling_rate")
    label = name or "audio"
    channel_axis: int | None = None
    if isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        values, rate = _read_audio_file(source, label, max_seconds, max_file_bytes)
        channel_axis = 1
    elif isinstance(source, tuple):
        if len(source) != 2:
            raise InputError(f"{label}: a tuple source must be (waveform, sampling_rate_hz)")
        values, rate = source[0], _checked_rate(source[1], f"{label} sampling rate")
    else:
        values, rate = source, target_rate
    if not isinstance(values, (np.ndarray, torch.Tensor)):
        raise InputError(
            f"{label}: unsupported type {type(values).__name__}; "
            "pass a file path, a numpy array, a torch tensor or (waveform, rate)"
        )
    mono = _to_mono(values, label, channel_axis)
    _check_duration(mono.shape[0] / rate, max_seconds, label)
    return mono if rate == target_rate else _resample(mono, rate, target_rate, label)


def _checked_rate(rate: object, what: str) -> int:
    """A sampling rate -> positive ``int`` Hz."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise InputError(f"{what}: expected a positive integer number of Hz, got {rate!r}")
    return int(rate)


def _read_audio_file(source: PathSource, label: str, max_seconds: float, max_file_bytes: int) -> tuple[np.ndarray, int]:
    """Audio file -> (float32 ``[T, C]`` samples, rate in Hz); duration is checked before decoding."""
    path = os.fspath(check_file(source, label, kind="audio", max_file_bytes=max_file_bytes))
    try:
        info = sf.info(path)
        _check_duration(info.frames / info.samplerate, max_seconds, label)
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
    except InputError:
        raise
    except _AUDIO_READ_ERRORS as exc:
        raise InputError(f"{label}: not a readable audio file ({exc}); pass a complete WAV, FLAC or OGG file") from exc
    return samples, int(rate)


def _check_duration(seconds: float, max_seconds: float, label: str) -> None:
    """Refuse clips longer than ``max_seconds``."""
    if seconds > max_seconds:
        raise InputError(
            f"{label}: {seconds:.1f} s of audio, over the limit of {max_seconds:g} s (max_seconds); "
            "trim it or raise max_seconds"
        )


def _to_mono(values: AudioArray, label: str, channel_axis: int | None) -> torch.Tensor:
    """``[T]``, ``[C, T]`` or ``[T, C]`` waveform -> float32 ``[T]`` in ``[-1, 1]`` (channel mean)."""
    shape = tuple(values.shape)
    if values.ndim not in (1, 2):
        raise InputError(
            f"{label}: waveform of shape {shape}; expected [T], [C, T] or [T, C] "
            f"with at most {_MAX_AUDIO_CHANNELS} channels (one clip per call)"
        )
    if 0 in shape:
        raise InputError(f"{label}: audio is empty (shape {shape}); pass at least one sample")
    if values.ndim == 2 and channel_axis is None:
        channel_axis = _audio_channel_axis(shape, label)
    samples = _unit_samples(values, label)
    return samples if samples.ndim == 1 else samples.mean(dim=channel_axis)


def _audio_channel_axis(shape: tuple[int, ...], label: str) -> int:
    """Which axis of a 2-D waveform holds the (at most 8) channels."""
    first, second = shape[0] <= _MAX_AUDIO_CHANNELS, shape[1] <= _MAX_AUDIO_CHANNELS
    if first != second:
        return 0 if first else 1
    problem = "is ambiguous" if first else f"has more than {_MAX_AUDIO_CHANNELS} channels on both axes"
    raise InputError(
        f"{label}: waveform shape {shape} {problem}; pass [C, T] or [T, C] with C <= "
        f"{_MAX_AUDIO_CHANNELS} and more samples than channels"
    )


def _unit_samples(values: AudioArray, label: str) -> torch.Tensor:
    """Samples -> float32 tensor in ``[-1, 1]``: checked floats or integer PCM divided by its full scale.

    Float tensors keep their device and autograd graph; everything else becomes a CPU tensor.
    """
    fix = "normalise the waveform to [-1, 1] (e.g. divide int16 samples by 32768)"
    if isinstance(values, torch.Tensor) and values.is_floating_point():
        _check_float_range(values, -1.0, 1.0, label, fix)
        return values.to(torch.float32)
    pcm = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else values
    if np.issubdtype(pcm.dtype, np.floating):
        _check_float_range(pcm, -1.0, 1.0, label, fix)
        scaled = pcm.astype(np.float32)
    elif pcm.dtype == np.uint8:
        scaled = (pcm.astype(np.float32) - 128) / 128
    elif np.issubdtype(pcm.dtype, np.signedinteger) and pcm.dtype.itemsize <= 4:
        scaled = pcm.astype(np.float32) / float(2 ** (8 * pcm.dtype.itemsize - 1))
    else:
        raise InputError(f"{label}: unsupported sample dtype {pcm.dtype}; use float in [-1, 1] or int16 / int32 PCM")
    return torch.from_numpy(np.ascontiguousarray(scaled))


def _resample(mono: torch.Tensor, rate: int, target_rate: int, label: str) -> torch.Tensor:
    """Polyphase resampling ``[T]`` at ``rate`` -> ``[T * target_rate / rate]`` at ``target_rate`` (CPU)."""
    if mono.requires_grad:
        raise InputError(
            f"{label}: cannot resample a tensor that requires grad ({rate} -> {target_rate} Hz); "
            f"pass it at {target_rate} Hz"
        )
    step = math.gcd(rate, target_rate)
    from scipy.signal import resample_poly  # imported on first use (scipy is slow to import)

    resampled = resample_poly(mono.cpu().numpy(), target_rate // step, rate // step)
    return torch.from_numpy(np.clip(resampled, -1.0, 1.0).astype(np.float32))


# ---------------------------------------------------------------------------------------------- prompts


def validate_prompt(prompt: object, *, max_chars: int = 32_000) -> str:
    """Return the prompt as ``str``; ``InputError`` if not a str, not valid UTF-8 text (lone surrogates, as
    Python decodes invalid bytes on a command line), blank, over ``max_chars``, or has NUL."""
    if not isinstance(prompt, str):
        raise InputError(f"prompt: expected a str, got {type(prompt).__name__}; pass the question as text")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"prompt: is not valid UTF-8 text (undecodable byte at character {exc.start}); pass UTF-8"
        ) from None
    if not prompt.strip():
        raise InputError("prompt: is empty or whitespace only; pass the question to ask")
    if len(prompt) > max_chars:
        raise InputError(f"prompt: {len(prompt):,} characters, over the limit of {max_chars:,} (max_chars); shorten it")
    if "\x00" in prompt:
        raise InputError("prompt: contains a NUL character (\\x00); remove it")
    return prompt


# ------------------------------------------------------------------------------------------------ files
