"""Tests for smoothguard.inputs: image / audio loading and prompt validation."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image, ImageFile
from transformers.image_transforms import convert_to_rgb

from smoothguard import InputError
from smoothguard.inputs import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT_RATIO,
    load_audio,
    load_image,
    validate_prompt,
)
from support.common import exact

RNG = np.random.default_rng(0)


def _rgb_hwc(tensor: torch.Tensor) -> np.ndarray:
    """[3, H, W] float tensor -> [H, W, 3] float64 array."""
    return tensor.detach().permute(1, 2, 0).double().numpy()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _header_only_png(path: Path, width: int, height: int) -> Path:
    """A few dozen bytes declaring a huge RGB image, with (almost) no pixel data behind the header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    return path


def _random_rgba(height: int = 6, width: int = 5) -> np.ndarray:
    rgba = RNG.integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255  # one fully transparent, one fully opaque pixel
    return rgba


def test_defaults() -> None:
    assert DEFAULT_MAX_PIXELS == 64_000_000
    assert DEFAULT_MAX_FILE_BYTES == 256 * 2**20


def test_rgb_png_file_exact_values(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    out = load_image(tmp_path / "x.png")
    assert out.shape == (3, 7, 9) and out.dtype == torch.float32
    np.testing.assert_allclose(_rgb_hwc(out), pixels / 255, atol=1e-7)
    assert torch.equal(load_image(str(tmp_path / "x.png")), out)


def test_gray_and_bilevel_modes() -> None:
    gray = Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.uint8))
    out = load_image(gray)
    for channel in out:
        np.testing.assert_allclose(channel.numpy(), np.array([[0, 100], [200, 255]]) / 255, atol=1e-7)
    bilevel = Image.fromarray(np.array([[True, False], [False, True]]))
    assert bilevel.mode == "1"
    np.testing.assert_array_equal(load_image(bilevel)[1].numpy(), [[1.0, 0.0], [0.0, 1.0]])


def test_palette_image_uses_its_colors(tmp_path: Path) -> None:
    image = Image.new("P", (2, 2))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30])
    image.putdata([0, 1, 2, 3])
    image.save(tmp_path / "p.png")
    out = _rgb_hwc(load_image(tmp_path / "p.png")) * 255
    np.testing.assert_allclose(out.reshape(4, 3), [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], atol=1e-4)


def test_palette_transparency_composited_on_white_like_transformers(tmp_path: Path) -> None:
    image = Image.new("P", (2, 2))
    image.putpalette([255, 0, 0, 0, 0, 255])
    image.putdata([0, 1, 1, 0])
    image.info["transparency"] = 1
    image.save(tmp_path / "pt.png", transparency=1)
    reopened = Image.open(tmp_path / "pt.png")
    out = _rgb_hwc(load_image(tmp_path / "pt.png")) * 255
    np.testing.assert_allclose(out, convert_to_rgb(reopened, return_numpy=True), atol=1e-4)
    np.testing.assert_allclose(out[0, 1], [255, 255, 255], atol=1e-4)  # transparent index -> white
    np.testing.assert_allclose(out[0, 0], [255, 0, 0], atol=1e-4)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_matches_transformers_convert_to_rgb(tmp_path: Path, mode: str) -> None:
    image = Image.fromarray(_random_rgba()).convert(mode)
    image.save(tmp_path / "a.png")
    expected = convert_to_rgb(Image.open(tmp_path / "a.png"), return_numpy=True).astype(np.float64)
    out = _rgb_hwc(load_image(tmp_path / "a.png")) * 255
    np.testing.assert_allclose(out, expected, atol=1e-4)
    np.testing.assert_allclose(out[0, 0], [255, 255, 255], atol=1e-4)  # alpha 0 -> white, not black


def test_16bit_png_keeps_precision(tmp_path: Path) -> None:
    codes = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    Image.fromarray(codes).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    out = load_image(tmp_path / "g16.png")
    assert out.shape == (3, 2, 2) and out.dtype == torch.float32
    assert out[0, 1, 0].item() == 1.0
    assert out[0, 0, 1].item() == pytest.approx(32768 / 65535, abs=1e-7)  # ~0.5, not clipped to 1.0
    assert out[0, 1, 1].item() == pytest.approx(1000 / 65535, abs=1e-7)  # finer than an 8-bit step
    assert torch.equal(out[0], out[2])


def test_32bit_integer_and_float_gray_modes() -> None:
    wide = Image.fromarray(np.array([[0, 65535], [6553, 100]], dtype=np.int32))
    assert wide.mode == "I"
    assert load_image(wide)[1, 1, 0].item() == pytest.approx(6553 / 65535, abs=1e-7)
    with pytest.raises(InputError, match=r"outside 0\.\.65535"):
        load_image(Image.fromarray(np.array([[0, 70000], [1, 2]], dtype=np.int32)))
    floats = Image.fromarray(np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32))
    assert floats.mode == "F"
    np.testing.assert_allclose(load_image(floats)[2].numpy(), [[0.0, 0.25], [0.5, 1.0]])
    with pytest.raises(InputError, match=r"out of \[0, 1\]"):
        load_image(Image.fromarray(np.array([[0.0, 2.0], [0.5, 1.0]], dtype=np.float32)))


def test_cmyk_tiff(tmp_path: Path) -> None:
    image = Image.new("CMYK", (2, 2), (0, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 0))
    image.save(tmp_path / "c.tif")
    out = _rgb_hwc(load_image(tmp_path / "c.tif")) * 255
    np.testing.assert_allclose(out[0, 0], [255, 255, 255], atol=1e-4)
    np.testing.assert_allclose(out[0, 1], [0, 255, 255], atol=1e-4)  # full cyan


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = (np.arange(6, dtype=np.uint8).reshape(2, 3) * 40).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "o.png", exif=exif)
    out = load_image(tmp_path / "o.png")
    assert out.shape == (3, 3, 2)
    np.testing.assert_allclose(out[0].numpy() * 255, np.rot90(pixels, k=-1), atol=1e-4)


@pytest.mark.parametrize("layout", ["hw", "hw1", "hwc", "chw", "1hwc"])
def test_array_layouts(layout: str) -> None:
    rgb = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    arrays = {
        "hw": gray,
        "hw1": gray[..., None],
        "hwc": rgb,
        "chw": rgb.transpose(2, 0, 1),
        "1hwc": rgb[None],
    }
    out = load_image(arrays[layout])
    assert out.shape == (3, 5, 6) and out.dtype == torch.float32
    expected = gray[..., None].repeat(3, axis=-1) if layout.startswith("hw") and "c" not in layout else rgb
    np.testing.assert_allclose(_rgb_hwc(out), expected / 255, atol=1e-7)


def test_array_dtypes() -> None:
    wide = np.full((2, 3), 32768, dtype=np.uint16)
    assert load_image(wide)[0, 0, 0].item() == pytest.approx(32768 / 65535, abs=1e-7)
    mask = np.array([[True, False, True], [False, True, False]])
    np.testing.assert_array_equal(load_image(mask)[0].numpy(), mask.astype(np.float32))
    floats = RNG.random((5, 6, 3))
    np.testing.assert_allclose(_rgb_hwc(load_image(floats)), floats, atol=1e-7)


def test_array_rgba_composited_on_white() -> None:
    rgba = _random_rgba().astype(np.float64) / 255
    out = _rgb_hwc(load_image(rgba))
    alpha = rgba[..., 3:]
    np.testing.assert_allclose(out, rgba[..., :3] * alpha + (1 - alpha), atol=1e-6)
    np.testing.assert_allclose(out[0, 0], [1.0, 1.0, 1.0])


def test_array_input_is_not_aliased() -> None:
    floats = RNG.random((5, 6, 3)).astype(np.float32)
    out = load_image(floats)
    out.zero_()
    assert floats.max() > 0


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.full((4, 4), 200.0), r"out of \[0, 1\].*divide"),
        (np.full((4, 4), -0.1), r"out of \[0, 1\]"),
        (np.array([[0.1, np.nan], [0.2, 0.3]]), "NaN or infinite"),
        (np.array([[0.1, np.inf], [0.2, 0.3]]), "NaN or infinite"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "at least 2x2"),
        (np.zeros((1, 5), dtype=np.uint8), "at least 2x2"),
        (np.zeros((3, 5, 4), dtype=np.uint8), "ambiguous"),
        (np.zeros((2, 5, 6, 3), dtype=np.uint8), "batch of 2 images.*one image per call"),
        (np.zeros((5, 6, 2), dtype=np.uint8), "not an image"),
        (np.zeros(10, dtype=np.uint8), "not an image"),
        (np.zeros((4, 4), dtype=np.int64), "unsupported pixel dtype int64"),
    ],
)
def test_bad_arrays_raise(array: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        load_image(array, name="frame_7")
    assert str(info.value).startswith("frame_7:")


def test_max_pixels_applies_to_arrays() -> None:
    with pytest.raises(InputError, match="max_pixels"):
        load_image(np.zeros((10, 10), dtype=np.uint8), max_pixels=99)
    assert load_image(np.zeros((10, 10), dtype=np.uint8), max_pixels=100).shape == (3, 10, 10)


def test_unsupported_type() -> None:
    with pytest.raises(InputError, match="unsupported type list"):
        load_image([[0, 1], [1, 0]])


@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 3, 4, 5)])
def test_float_tensor_keeps_gradient(shape: tuple[int, ...]) -> None:
    source = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    out = load_image(source)
    assert out.shape == (3, 4, 5) and out.dtype == torch.float32 and out.requires_grad
    (out * torch.arange(60.0).reshape(3, 4, 5)).sum().backward()
    assert source.grad is not None
    torch.testing.assert_close(source.grad.reshape(3, 4, 5), torch.arange(60.0, dtype=torch.float64).reshape(3, 4, 5))


@pytest.mark.parametrize("shape", [(4, 5), (1, 4, 5)])
def test_gray_tensor_expands_with_gradient(shape: tuple[int, ...]) -> None:
    source = torch.rand(shape, requires_grad=True)
    out = load_image(source)
    assert out.shape == (3, 4, 5)
    torch.testing.assert_close(out[2], source.detach().reshape(4, 5))
    out.sum().backward()
    torch.testing.assert_close(source.grad, torch.full(shape, 3.0))


def test_rgba_tensor_gradient_reaches_alpha() -> None:
    source = torch.rand(4, 3, 3, requires_grad=True)
    load_image(source).sum().backward()
    assert source.grad is not None
    # d/d alpha of sum_c (rgb_c * a + 1 - a) = sum_c (rgb_c - 1)
    torch.testing.assert_close(source.grad[3], (source.detach()[:3] - 1).sum(0))


def test_integer_tensor_scaled() -> None:
    source = torch.tensor([[[0, 255], [51, 102]]] * 3, dtype=torch.uint8)
    out = load_image(source)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out[0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (torch.rand(2, 3, 4, 4), "batch of 2 images.*one image per call"),
        (torch.rand(6, 6, 3), r"channel-first.*permute"),
        (torch.full((3, 4, 4), 1.5), r"out of \[0, 1\]"),
        (torch.tensor([[[float("nan")] * 2] * 2] * 3), "NaN or infinite"),
        (torch.zeros(3, 1, 4), "at least 2x2"),
    ],
)
def test_bad_tensors_raise(tensor: torch.Tensor, match: str) -> None:
    with pytest.raises(InputError, match=match):
        load_image(tensor)


def test_range_check_does_not_break_graph() -> None:
    source = torch.full((3, 2, 2), 0.5, requires_grad=True)
    with pytest.raises(InputError, match="image tensor"):
        load_image(source * 3)
    out = load_image(source * 1.5)
    out.sum().backward()
    torch.testing.assert_close(source.grad, torch.full((3, 2, 2), 1.5))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file") as info:
        load_image(tmp_path / "missing.png")
    assert str(tmp_path / "missing.png") in str(info.value)
    with pytest.raises(InputError, match="URLs are not fetched"):
        load_image("https://example.com/cat.png")


def test_directory_empty_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory"):
        load_image(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png: file is empty"):
        load_image(tmp_path / "empty.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    size = (tmp_path / "ok.png").stat().st_size
    with pytest.raises(InputError, match=r"ok\.png: file is .* bytes, over the limit"):
        load_image(tmp_path / "ok.png", max_file_bytes=size - 1)
    assert load_image(tmp_path / "ok.png", max_file_bytes=size).shape == (3, 8, 8)


def test_not_an_image_uses_given_name(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello, not pixels")
    with pytest.raises(InputError, match=r"^upload\.png: not a readable image"):
        load_image(tmp_path / "notes.png", name="upload.png")


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_truncated_file_refused(tmp_path: Path, suffix: str) -> None:
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"full.{suffix}")
    data = (tmp_path / f"full.{suffix}").read_bytes()
    (tmp_path / f"cut.{suffix}").write_bytes(data[: len(data) // 2])
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    with pytest.raises(InputError, match=r"not a readable image.*truncated") as info:
        load_image(tmp_path / f"cut.{suffix}")
    assert f"cut.{suffix}" in str(info.value)


def test_corrupt_png_checksum_refused(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "x.png")
    data = bytearray((tmp_path / "x.png").read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 6] ^= 0xFF  # flip compressed bytes: CRC no longer matches
    (tmp_path / "x.png").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"x\.png: not a readable image"):
        load_image(tmp_path / "x.png")


def test_bomb_refused_from_header_before_decoding(tmp_path: Path) -> None:
    # 81 M pixels: under PIL's own limit, over ours; the file has no real pixel data, so decoding it
    # would fail with a different (truncation) message.
    path = _header_only_png(tmp_path / "bomb.png", 9000, 9000)
    assert path.stat().st_size < 200
    with pytest.raises(InputError, match=r"bomb\.png: image is 9000x9000 = 81,000,000 pixels.*max_pixels"):
        load_image(path)


def test_max_pixels_checked_before_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "x.png")

    def _no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", _no_decoding)
    with pytest.raises(InputError, match="40x30 = 1,200 pixels, over the limit of 1,000"):
        load_image(tmp_path / "x.png", max_pixels=1000)


@pytest.mark.parametrize("side", [20_000, 10_000])
def test_pil_bomb_error_and_warning_become_input_error(tmp_path: Path, side: int) -> None:
    # 400 M pixels -> PIL's DecompressionBombError; 100 M pixels -> its DecompressionBombWarning.
    path = _header_only_png(tmp_path / "bomb.png", side, side)
    with pytest.raises(InputError, match="decompression bomb"):
        load_image(path, max_pixels=10**9)


def _sine(frequency: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def test_stereo_int16_wav_is_mean_mono(tmp_path: Path) -> None:
    left = np.full(1000, 16384, dtype=np.int16)  # 0.5
    right = np.full(1000, -8192, dtype=np.int16)  # -0.25
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="PCM_16")
    out = load_audio(tmp_path / "s.wav", sampling_rate=16000)
    assert out.shape == (1000,) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full((1000,), 0.125))


def test_int16_scaling_file_and_array(tmp_path: Path) -> None:
    pcm = np.array([-32768, 0, 16384, 32767], dtype=np.int16)
    expected = torch.tensor([-1.0, 0.0, 0.5, 32767 / 32768])
    sf.write(tmp_path / "i.wav", pcm, 8000, subtype="PCM_16")
    torch.testing.assert_close(load_audio(tmp_path / "i.wav", sampling_rate=8000), expected)
    torch.testing.assert_close(load_audio(pcm, sampling_rate=8000), expected)
    torch.testing.assert_close(load_audio(torch.from_numpy(pcm), sampling_rate=8000), expected)


def test_resample_8k_to_16k_preserves_frequency(tmp_path: Path) -> None:
    sf.write(tmp_path / "tone.wav", _sine(440.0, 8000, 1.0), 8000, subtype="PCM_16")
    for source in (tmp_path / "tone.wav", (_sine(440.0, 8000, 1.0), 8000)):
        out = load_audio(source, sampling_rate=16000)
        assert out.shape == (16000,)
        spectrum = np.abs(np.fft.rfft(out.numpy()))
        assert np.fft.rfftfreq(16000, 1 / 16000)[spectrum.argmax()] == pytest.approx(440.0, abs=1.0)
        assert float(out.abs().max()) == pytest.approx(0.5, abs=0.02)


def test_resample_44k1_length() -> None:
    out = load_audio((np.zeros(44100, dtype=np.float32), 44100), sampling_rate=16000)
    assert out.shape == (16000,)


def test_flac_reads(tmp_path: Path) -> None:
    tone = _sine(1000.0, 16000, 0.25)
    sf.write(tmp_path / "t.flac", tone, 16000)
    torch.testing.assert_close(
        load_audio(tmp_path / "t.flac", sampling_rate=16000), torch.from_numpy(tone), atol=1 / 32768, rtol=0
    )


@pytest.mark.parametrize("channels_first", [True, False])
def test_multichannel_arrays_mean(channels_first: bool) -> None:
    stereo = np.stack([np.full(100, 0.5), np.full(100, -0.1)]).astype(np.float32)
    out = load_audio(stereo if channels_first else stereo.T, sampling_rate=16000)
    torch.testing.assert_close(out, torch.full((100,), 0.2))


def test_uint8_pcm_array() -> None:
    torch.testing.assert_close(
        load_audio(np.array([0, 128, 192], dtype=np.uint8), sampling_rate=8000),
        torch.tensor([-1.0, 0.0, 0.5]),
    )


def test_float_audio_tensor_keeps_gradient() -> None:
    source = torch.rand(2, 50, dtype=torch.float64, requires_grad=True)
    out = load_audio(source, sampling_rate=16000)
    assert out.shape == (50,) and out.dtype == torch.float32 and out.requires_grad
    out.sum().backward()
    torch.testing.assert_close(source.grad, torch.full((2, 50), 0.5, dtype=torch.float64))
    with pytest.raises(InputError, match="cannot resample a tensor that requires grad"):
        load_audio((source, 8000), sampling_rate=16000)


def test_long_audio_allowed_up_to_max_seconds() -> None:
    assert load_audio(np.zeros(3100, dtype=np.float32), sampling_rate=100).shape == (3100,)  # 31 s
    with pytest.raises(InputError, match=r"clip: 31\.0 s of audio, over the limit of 30 s"):
        load_audio(np.zeros(3100, dtype=np.float32), sampling_rate=100, max_seconds=30, name="clip")


def test_long_audio_file_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sf.write(tmp_path / "long.wav", np.zeros(8000 * 3, dtype=np.float32), 8000)

    def _no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("audio was decoded before the duration check")

    monkeypatch.setattr(sf, "read", _no_decoding)
    with pytest.raises(InputError, match=r"long\.wav: 3\.0 s of audio, over the limit of 2 s"):
        load_audio(tmp_path / "long.wav", sampling_rate=8000, max_seconds=2)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (np.zeros(0, dtype=np.float32), "audio is empty"),
        (np.zeros((2, 0), dtype=np.float32), "audio is empty"),
        (np.array([0.1, np.nan], dtype=np.float32), "NaN or infinite"),
        (np.array([0.1, -np.inf], dtype=np.float32), "NaN or infinite"),
        (np.array([0.1, 1.5], dtype=np.float32), r"out of \[-1, 1\].*normalise"),
        (torch.tensor([0.0, -2.0]), r"out of \[-1, 1\].*normalise"),
        (np.zeros((4, 4), dtype=np.float32), "ambiguous"),
        (np.zeros((20, 30), dtype=np.float32), "more than 8 channels"),
        (np.zeros((1, 2, 30), dtype=np.float32), "expected \\[T\\]"),
        (np.zeros(10, dtype=np.int64), "unsupported sample dtype int64"),
        ("not/a/file.wav", "no such file"),
        ([0.0, 0.1], "unsupported type list"),
        ((np.zeros(10), 0), "expected a positive integer"),
        ((np.zeros(10), 8000, 1), "tuple source"),
    ],
)
def test_bad_audio_raises(source: object, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        load_audio(source, sampling_rate=16000, name="speech")
    assert "speech" in str(info.value)


def test_bad_sampling_rate() -> None:
    with pytest.raises(InputError, match="sampling_rate"):
        load_audio(np.zeros(10), sampling_rate=0)
    with pytest.raises(InputError, match="sampling_rate"):
        load_audio(np.zeros(10), sampling_rate=16000.0)  # type: ignore[arg-type]


def test_audio_file_errors(tmp_path: Path) -> None:
    (tmp_path / "notes.wav").write_text("definitely not audio")
    with pytest.raises(InputError, match=r"notes\.wav: not a readable audio file"):
        load_audio(tmp_path / "notes.wav", sampling_rate=16000)
    sf.write(tmp_path / "ok.wav", np.zeros(100, dtype=np.float32), 16000)
    header = (tmp_path / "ok.wav").read_bytes()[:30]
    (tmp_path / "corrupt.wav").write_bytes(header + bytes(64))
    with pytest.raises(InputError, match=r"corrupt\.wav: not a readable audio file"):
        load_audio(tmp_path / "corrupt.wav", sampling_rate=16000)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.wav: file is empty"):
        load_audio(tmp_path / "empty.wav", sampling_rate=16000)
    with pytest.raises(InputError, match="is a directory"):
        load_audio(tmp_path, sampling_rate=16000)
    with pytest.raises(InputError, match="over the limit"):
        load_audio(tmp_path / "ok.wav", sampling_rate=16000, max_file_bytes=10)


def test_float_wav_out_of_range_refused(tmp_path: Path) -> None:
    sf.write(tmp_path / "loud.wav", np.array([0.0, 1.5, -0.2], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(InputError, match=r"loud\.wav: values out of \[-1, 1\].*normalise"):
        load_audio(tmp_path / "loud.wav", sampling_rate=16000)


def test_validate_prompt_accepts_text() -> None:
    assert validate_prompt("  What is in the image?\n") == "  What is in the image?\n"
    assert validate_prompt("x" * 10, max_chars=10) == "x" * 10


@pytest.mark.parametrize(
    ("prompt", "match"),
    [
        (None, "expected a str, got NoneType"),
        (b"bytes", "expected a str, got bytes"),
        ("", "empty"),
        (" \n\t ", "empty"),
        ("a\x00b", "NUL"),
        ("x" * 11, "11 characters, over the limit of 10"),
    ],
)
def test_validate_prompt_rejects(prompt: object, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        validate_prompt(prompt, max_chars=10)
    assert str(info.value).startswith("prompt:")


@pytest.mark.parametrize("as_file", [False, True])
def test_audio_of_exactly_max_seconds_is_accepted_one_sample_more_refused(tmp_path: Path, as_file: bool) -> None:
    """Mutation caught: the duration check ``seconds > max_seconds`` turned into ``>=`` (or off by a sample),
    for arrays and for files (checked from the header)."""
    rate, seconds = 8000, 2

    def source(samples: int) -> object:
        values = np.zeros(samples, dtype=np.float32)
        if not as_file:
            return (values, rate)
        path = tmp_path / f"clip-{samples}.wav"
        sf.write(path, values, rate)
        return path

    exact = load_audio(source(rate * seconds), sampling_rate=rate, max_seconds=seconds)
    assert exact.shape == (rate * seconds,)
    with pytest.raises(InputError, match="max_seconds"):
        load_audio(source(rate * seconds + 1), sampling_rate=rate, max_seconds=seconds)


@pytest.mark.parametrize("as_file", [False, True])
def test_image_of_exactly_max_pixels_is_accepted_one_pixel_more_refused(tmp_path: Path, as_file: bool) -> None:
    """Mutation caught: the pixel check ``width * height > max_pixels`` turned into ``>=`` (or off by one),
    for arrays and for files (checked from the header)."""
    codes = np.zeros((12, 10, 3), dtype=np.uint8)
    source: object = codes
    if as_file:
        source = tmp_path / "img.png"
        Image.fromarray(codes).save(source)
    assert load_image(source, max_pixels=120).shape == (3, 12, 10)
    with pytest.raises(InputError, match="max_pixels"):
        load_image(source, max_pixels=119)


# images: labels and file kinds


def test_a_missing_or_empty_image_file_is_called_an_image(tmp_path):
    """load_image: ``check_file(..., kind="image")`` -> None / "XXimageXX" / "IMAGE"."""
    (tmp_path / "empty.png").write_bytes(b"")
    label = str(tmp_path / "empty.png")
    with pytest.raises(InputError, match=exact(f"{label}: file is empty (0 bytes); pass a complete image file")):
        load_image(tmp_path / "empty.png")


def test_a_pil_image_is_labelled_by_name_then_file_name_then_pil_image(tmp_path):
    """load_image (PIL branch): ``name or getattr(source, "filename", "") or "PIL image"`` (``or`` ->
    ``and`` either side, ``source`` -> None, the attribute or its default changed, the fallback
    "XX...XX" / lower case, the label -> None). A 1x1 image is refused, naming its label."""
    small = Image.new("RGB", (1, 1))
    tail = ": image is 1x1 pixels; images must be at least 2x2"
    with pytest.raises(InputError, match=exact("PIL image" + tail)):
        load_image(small)
    with pytest.raises(InputError, match=exact("mine" + tail)):
        load_image(small, name="mine")
    small.save(tmp_path / "dot.png")
    with (
        Image.open(tmp_path / "dot.png") as opened,
        pytest.raises(InputError, match=exact(f"{tmp_path / 'dot.png'}{tail}")),
    ):
        load_image(opened)


def test_a_float_gray_image_out_of_range_is_named(tmp_path):
    """_pil_to_tensor -> _high_depth_gray -> _unit_pixels: the label passed on (-> None) and the fix
    "divide 8-bit values by 255 (16-bit by 65535) first" (-> None / "XX...XX" / upper case)."""
    image = Image.fromarray(np.array([[0.5, 2.0], [0.0, 1.0]], dtype=np.float32), mode="F")
    message = "bright: values out of [0, 1] (min 0, max 2); divide 8-bit values by 255 (16-bit by 65535) first"
    with pytest.raises(InputError, match=exact(message)):
        load_image(image, name="bright")
    with pytest.raises(InputError, match=exact(message.replace("bright", "t"))):
        load_image(torch.full((3, 2, 2), 2.0).index_fill_(1, torch.tensor([0]), 0.0), name="t")
    with pytest.raises(InputError, match=exact(message.replace("bright", "a"))):
        load_image(np.array([[0.0, 2.0], [0.5, 0.5]]), name="a")


def test_a_mode_that_cannot_become_rgb_is_named():
    """_pil_to_tensor -> _composite_on_white: the label passed on (-> None) and the message (-> None).
    PIL cannot convert mode La to RGB (its own reason, in brackets, varies with its version)."""
    message = r"^odd: image mode La cannot be converted to RGB \(.+\); save it as RGB first$"
    with pytest.raises(InputError, match=message):
        load_image(Image.new("La", (2, 2)), name="odd")


def test_16_bit_gray_transparency_becomes_white_only_where_it_is(tmp_path):
    """_high_depth_gray: pixels equal to the PNG tRNS value are white (the ``transparency`` key
    -> None / "XX...XX" / upper case, ``==`` -> ``!=``, the white 1.0 -> None), and only those."""
    codes = np.array([[1000, 2000], [65535, 1000]], dtype=np.uint16)
    Image.fromarray(codes).save(tmp_path / "g16.png", transparency=1000)
    gray = load_image(tmp_path / "g16.png")[0]
    assert torch.allclose(gray, torch.tensor([[1.0, 2000 / 65535], [1.0, 1.0]]))


# images: shapes, sizes and dtypes


def test_shape_messages_in_full():
    """_drop_batch_of_one's "pass one image per call", _channels_first's expected-layout texts (array and
    tensor) and its ambiguity hint -> None / "XX...XX" / lower or upper case."""
    with pytest.raises(
        InputError, match=exact("b: got a batch of 2 images (shape (2, 3, 4, 4)); pass one image per call")
    ):
        load_image(np.zeros((2, 3, 4, 4), np.uint8), name="b")
    layout = "expected [H, W], [H, W, C] or [C, H, W] with C in (1, 3, 4) (one image per call)"
    with pytest.raises(InputError, match=exact(f"a: shape (5, 4, 6) is not an image; {layout}")):
        load_image(np.zeros((5, 4, 6), np.uint8), name="a")
    tensor = "expected a channel-first tensor [C, H, W] with C in (1, 3, 4); use .permute(2, 0, 1) (one image per call)"
    with pytest.raises(InputError, match=exact(f"t: shape (5, 4, 3) is not an image; {tensor}")):
        load_image(torch.zeros(5, 4, 3), name="t")
    ambiguous = (
        "a: array shape (3, 4, 3) is ambiguous (H x W x C or C x H x W); "
        "pass it as a channel-first torch tensor or a PIL image"
    )
    with pytest.raises(InputError, match=exact(ambiguous)):
        load_image(np.zeros((3, 4, 3), np.uint8), name="a")


def test_aspect_ratio_limit_allows_exactly_its_value():
    """_check_image_size: ``max > MAX_ASPECT_RATIO * min`` -> ``>=``: a 400x2 image (200:1) is allowed,
    402x2 refused, with the whole message."""
    assert MAX_ASPECT_RATIO == 200
    assert load_image(np.zeros((2, 400), np.uint8)).shape == (3, 2, 400)
    message = (
        "w: image is 402x2 pixels, an aspect ratio over 200:1; crop or pad it "
        "(resizing its short side to the model's input would make it enormous)"
    )
    with pytest.raises(InputError, match=exact(message)):
        load_image(np.zeros((2, 402), np.uint8), name="w")


@pytest.mark.parametrize(
    "codes", [np.array([[0, 255], [1, 2]], np.uint8), np.array([[True, False], [False, True]]), np.ones((2, 2))]
)
def test_every_pixel_dtype_comes_back_as_float32(codes):
    """_unit_pixels: ``astype(np.float32)`` -> ``astype(None)`` (float64) in the bool, unsigned and float
    branches."""
    assert load_image(codes).dtype == torch.float32


def test_signed_integer_pixels_are_refused_with_the_supported_dtypes():
    """_unit_pixels: ``kind == "u" and itemsize <= 2`` -> ``or`` (int16 pixels would be divided by 32767);
    the message -> "XX...XX" / upper case."""
    message = "i: unsupported pixel dtype int16; use uint8 (0..255), uint16 (0..65535), bool, or float in [0, 1]"
    with pytest.raises(InputError, match=exact(message)):
        load_image(np.zeros((2, 2), np.int16), name="i")


# audio


def test_audio_default_duration_limit_is_600_seconds():
    """load_audio: ``max_seconds=600.0`` -> 601: at 10 Hz, 6,000 samples (600 s) pass, 6,001 are
    refused; the message's hint (-> "XX...XX" / upper case)."""
    assert load_audio(np.zeros(6000, np.float32), sampling_rate=10).shape == (6000,)
    message = "audio: 600.1 s of audio, over the limit of 600 s (max_seconds); trim it or raise max_seconds"
    with pytest.raises(InputError, match=exact(message)):
        load_audio(np.zeros(6001, np.float32), sampling_rate=10)


def test_audio_rate_and_type_messages():
    """load_audio: the "sampling_rate" label (-> "XX...XX"), the default "audio" label (-> "XX...XX" /
    "AUDIO"), the unsupported-type hint; _checked_rate: ``rate <= 0`` -> ``<= 1`` (1 Hz is a rate)."""
    with pytest.raises(InputError, match=exact("sampling_rate: expected a positive integer number of Hz, got 0")):
        load_audio(np.zeros(4, np.float32), sampling_rate=0)
    assert load_audio(np.zeros(4, np.float32), sampling_rate=1).shape == (4,)
    message = "audio: unsupported type list; pass a file path, a numpy array, a torch tensor or (waveform, rate)"
    with pytest.raises(InputError, match=exact(message)):
        load_audio(([0.0, 0.1], 8000), sampling_rate=8000)


def test_a_missing_audio_file_is_called_an_audio_file(tmp_path):
    """_read_audio_file: ``check_file(..., kind="audio")`` -> None / "XXaudioXX" / "AUDIO"."""
    (tmp_path / "empty.wav").write_bytes(b"")
    label = str(tmp_path / "empty.wav")
    with pytest.raises(InputError, match=exact(f"{label}: file is empty (0 bytes); pass a complete audio file")):
        load_audio(tmp_path / "empty.wav", sampling_rate=8000)


@pytest.mark.parametrize(("shape", "axis"), [((8, 50), 0), ((50, 8), 1)])
def test_eight_channels_on_either_axis_are_channels(shape, axis):
    """_audio_channel_axis: ``<= _MAX_AUDIO_CHANNELS`` -> ``<`` on either axis: 8 channels are allowed,
    averaged to mono."""
    pcm = np.arange(400, dtype=np.float32).reshape(shape) / 1000
    assert torch.allclose(load_audio(pcm, sampling_rate=8000), torch.from_numpy(pcm.mean(axis=axis)))


def test_audio_layout_and_range_messages():
    """_audio_channel_axis's "is ambiguous" (-> "XX...XX") and _unit_samples' fix text (-> "XX...XX")."""
    message = "w: waveform shape (4, 4) is ambiguous; pass [C, T] or [T, C] with C <= 8 and more samples than channels"
    with pytest.raises(InputError, match=exact(message)):
        load_audio(np.zeros((4, 4), np.float32), sampling_rate=8000, name="w")
    message = (
        "w: values out of [-1, 1] (min 0, max 2); "
        "normalise the waveform to [-1, 1] (e.g. divide int16 samples by 32768)"
    )
    with pytest.raises(InputError, match=exact(message)):
        load_audio(np.array([0.0, 2.0], np.float32), sampling_rate=8000, name="w")


def test_int32_pcm_is_divided_by_two_to_the_31():
    """_unit_samples: ``itemsize <= 4`` -> ``< 4``: 32-bit PCM is PCM, full scale 2**31."""
    pcm = np.array([2**30, -(2**31), 0], np.int32)
    assert torch.equal(load_audio(pcm, sampling_rate=8000), torch.tensor([0.5, -1.0, 0.0]))


def test_resampled_audio_is_float32_clipped_to_both_bounds():
    """_resample: ``np.clip(..., -1.0, 1.0)`` with either bound dropped or moved to -2 / 2, and
    ``astype(np.float32)`` -> None. A full-scale square wave overshoots on both sides when resampled
    (Gibbs), so the result must touch both bounds exactly and no further."""
    square = np.where(np.arange(800) % 40 < 20, 1.0, -1.0).astype(np.float32)
    out = load_audio((square, 8000), sampling_rate=16000)
    assert out.dtype == torch.float32 and out.shape == (1600,)
    assert out.max().item() == 1.0 and out.min().item() == -1.0


def test_a_grad_tensor_that_needs_resampling_is_named():
    """load_audio -> _resample: the label passed on (-> None)."""
    wave = torch.zeros(800, requires_grad=True)
    message = "clip: cannot resample a tensor that requires grad (8000 -> 16000 Hz); pass it at 16000 Hz"
    with pytest.raises(InputError, match=exact(message)):
        load_audio((wave, 8000), sampling_rate=16000, name="clip")


def test_an_int16_wav_reads_as_float_pcm(tmp_path):
    """_read_audio_file: ``sf.read(path, dtype="float32", ...)``: int16 samples come back divided by
    32768, as float32."""
    sf.write(tmp_path / "i.wav", np.array([16384, -32768, 0], np.int16), 8000, subtype="PCM_16")
    assert torch.equal(load_audio(tmp_path / "i.wav", sampling_rate=8000), torch.tensor([0.5, -1.0, 0.0]))


# prompts


def test_prompt_default_length_limit_is_32000_characters():
    """validate_prompt: ``max_chars=32_000`` -> 32001: 32,000 characters pass, 32,001 are refused."""
    assert len(validate_prompt("a" * 32_000)) == 32_000
    with pytest.raises(
        InputError, match=exact("prompt: 32,001 characters, over the limit of 32,000 (max_chars); shorten it")
    ):
        validate_prompt("a" * 32_001)


def test_undecodable_prompt_message_names_the_character():
    """validate_prompt: the UTF-8 error message -> None."""
    message = "prompt: is not valid UTF-8 text (undecodable byte at character 2); pass UTF-8"
    with pytest.raises(InputError, match=exact(message)):
        validate_prompt("ab\udcff")


def test_extreme_aspect_ratios_are_refused_before_decoding(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (20000, 3)).save(path)
    with pytest.raises(InputError, match="aspect ratio over 200:1"):
        load_image(path)
    assert load_image(np.zeros((2, 400, 3), np.uint8)).shape == (3, 2, 400)  # 200:1 is still an image
