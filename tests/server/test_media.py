"""Tests of ``smoothguard.server.media``."""

import base64
import io

import numpy as np
import pytest
import soundfile as sf

from smoothguard import SmoothGuard
from smoothguard.server import BackgroundServer, ServerSettings, create_app
from support.server import KEY, error_of, image_part, post, refused, user

BODY_LIMIT = 64 * 1024


def test_http_image_urls_need_an_allowed_prefix(server, image_host):
    def ask_url(url):
        return post(server.url, {"messages": user("Hi", image_part(url))}, key=KEY)

    refused = ask_url(f"{image_host}secret.png")
    assert refused.status_code == 422 and error_of(refused)["code"] == "image_url_not_allowed"
    assert "data: URI" in error_of(refused)["message"]
    assert ask_url(f"{image_host}allowed/ok.png").status_code == 200
    missing = ask_url(f"{image_host}allowed/missing.png")
    assert missing.status_code == 422 and error_of(missing)["code"] == "image_fetch_failed"


URL_ERRORS = {
    "an image URL over the body limit": ("web", "big.png", (413, "image_too_large", f"over {BODY_LIMIT:,} bytes")),
    "an image URL whose host refuses": ("refusing", "a.png", (422, "image_fetch_failed", "(ConnectError)")),
    "an image URL that never answers": ("silent", "a.png", (422, "image_fetch_failed", "(ReadTimeout)")),
}


@pytest.mark.parametrize("case", list(URL_ERRORS))
def test_image_url_failures_are_named(plain_server, loopback, case):
    """An allowed image URL that is too large (413, read no further), refused or silent past the fetch
    timeout (422 naming the failure): the client is told, the server does not hang."""
    endpoint, path, expected = URL_ERRORS[case]
    refused(post(plain_server.url, {"messages": user("Hi", image_part(loopback[endpoint] + path))}), *expected)


def test_a_server_without_url_prefixes_fetches_no_image_url(tiny_llava, loopback):
    settings = ServerSettings(max_num_copies=0)
    with BackgroundServer(create_app(SmoothGuard(tiny_llava, num_copies=0), settings)) as running:
        response = post(running.url, {"messages": user("Hi", image_part(loopback["web"] + "big.png"))})
    refused(response, 422, "image_url_not_allowed", "this server does not fetch remote images")


def wav_part(samples, rate=16000, audio_format="wav", raw=None):
    """An ``input_audio`` part holding ``samples`` ([T] or [T, C] float32) as a WAV, or ``raw`` bytes."""
    if raw is None:
        buffer = io.BytesIO()
        sf.write(buffer, samples, rate, format="WAV")
        raw = buffer.getvalue()
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(raw).decode(), "format": audio_format}}


AUDIO_ERRORS = {
    "an unsupported format": (wav_part(np.zeros(1600, np.float32), audio_format="aac"), "unsupported_audio_format"),
    "bytes that are not audio": (wav_part(None, raw=b"RIFF\x00\x00\x00\x00WAVEjunk"), "invalid_audio"),
    "an empty clip": (wav_part(np.zeros(0, np.float32)), "invalid_audio"),
    "a clip of 5 samples": (wav_part(np.zeros(5, np.float32)), "invalid_input"),
    "a clip of 960 samples (0.06 s)": (wav_part(np.full(960, 0.1, np.float32)), "invalid_input"),
}


AUDIO_MESSAGES = {
    "unsupported_audio_format": "audio format 'aac'; send one of wav, flac, ogg, mp3",
    "invalid_audio": "messages[0].content[1]: ",
    "invalid_input": "the audio clip is too short for this model",
}


@pytest.fixture(scope="module")
def audio_server(audio_model):
    with BackgroundServer(create_app(SmoothGuard(audio_model, num_copies=0), ServerSettings(max_num_copies=0))) as s:
        yield s


@pytest.mark.parametrize("case", list(AUDIO_ERRORS))
def test_the_audio_server_refuses_bad_clips_in_one_line(audio_server, case):
    """Bad or too-short clips are 422s that say why. Two bugs this found: a clip under 961 samples
    crashed Qwen2-Audio's forward (fewer than two audio tokens: a 500, TypeError), and clips of 8 samples
    or fewer were refused as an "ambiguous [C, T] or [T, C] shape" (the server knows soundfile's layout)."""
    part, code = AUDIO_ERRORS[case]
    response = post(audio_server.url, {"messages": user("What?", part), "max_tokens": 2})
    error = refused(response, 422, code, AUDIO_MESSAGES[code])
    assert "ambiguous" not in error["message"] and "[C, T]" not in error["message"]


def test_the_audio_server_answers_a_short_clip_and_many_channels(audio_server):
    """The shortest clip the model takes (961 samples) and a 9-channel WAV (averaged to mono) are answered."""
    for samples in (np.full(961, 0.1, np.float32), np.full((1600, 9), 0.1, np.float32)):
        response = post(audio_server.url, {"messages": user("What?", wav_part(samples)), "max_tokens": 2})
        assert response.status_code == 200, response.text
