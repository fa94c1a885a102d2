"""One test per hole that mutation testing (mutmut, README "Mutation testing") found in
``smoothguard.inputs``; each docstring names the mutation it catches. Most holes were messages: a
user's mistake must come back as one line that names the input and says what to do, so the messages
are pinned whole here, with the expected values worked out by hand."""

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from conftest import exact
from smoothguard.errors import InputError
from smoothguard.inputs import MAX_ASPECT_RATIO, load_audio, load_image, validate_prompt

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
