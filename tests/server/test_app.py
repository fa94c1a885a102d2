"""Tests of ``smoothguard.server.app``."""

import struct
import zlib

import httpx
import openai
import pytest

from support.server import KEY, ask, data_uri, error_of, image_part, png_bytes, post, question, refused, user

BODY_LIMIT = 64 * 1024


def test_models_health_and_jpeg(client, server):
    assert [m.id for m in client.models.list()] == ["tiny"]
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["mode"] == "local" and health["num_copies"] == 2
    jpeg = data_uri(png_bytes(2, image_format="JPEG"), "image/jpeg")
    system = [{"role": "system", "content": "Be brief."}]
    completion = ask(client, system + user("What is it?", image_part(jpeg), "Answer in one word."))
    assert completion.model_extra["smoothguard"]["num_candidates"] == 3


def test_api_key_is_required(server):
    body = {"model": "tiny", "messages": question("Hi", seed=0)}
    for key in (None, "wrong"):
        response = post(server.url, body, key=key)
        assert response.status_code == 401 and error_of(response)["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{server.url}/health").status_code == 200


def _garbage_png():
    return data_uri(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)


MALFORMED = {
    "not JSON": (b"{not json", 400, "invalid_json"),
    "not an object": (b"[1, 2]", 422, "invalid_type"),
    "messages not a list": ({"messages": "hi"}, 422, "invalid_type"),
    "no messages": ({"messages": []}, 422, "invalid_type"),
    "text not a string": ({"messages": user({"type": "text", "text": 5})}, 422, "invalid_value"),
    "num_copies as a string": (
        {"messages": question("Hi", 0), "smoothguard": {"num_copies": "3"}},
        422,
        "invalid_type",
    ),
    "unknown smoothguard field": ({"messages": question("Hi", 0), "smoothguard": {"copies": 3}}, 422, "invalid_type"),
    "seed too large": ({"messages": question("Hi", 0), "smoothguard": {"seed": 2**70}}, 422, "invalid_value"),
    "negative num_copies": ({"messages": question("Hi", 0), "smoothguard": {"num_copies": -1}}, 422, "invalid_value"),
    "NUL in the prompt": ({"messages": question("Hi\x00", 0)}, 422, "invalid_input"),
    "lone surrogate": (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "invalid_json"),
    "NaN sigma": (b'{"messages": [], "smoothguard": {"sigma": NaN}}', 422, "invalid_type"),
    "missing image": ({"messages": user("Hi")}, 422, "missing_image"),
    "missing prompt": ({"messages": user(image_part(data_uri(png_bytes(0))))}, 422, "missing_prompt"),
    "two images": (
        {"messages": user("Hi", image_part(data_uri(png_bytes(0))), image_part(data_uri(png_bytes(1))))},
        422,
        "too_many_media",
    ),
    "unsupported part": (
        {"messages": user("Hi", {"type": "video_url", "video_url": {"url": "x"}})},
        422,
        "unsupported_content_part",
    ),
    "audio to an image model": (
        {"messages": user("Hi", {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}})},
        422,
        "wrong_modality",
    ),
    "image_url not an object": ({"messages": user("Hi", {"type": "image_url", "image_url": 3})}, 422, "invalid_value"),
    "bad base64": ({"messages": user("Hi", image_part("data:image/png;base64,@@@"))}, 422, "invalid_base64"),
    "not an image": ({"messages": user("Hi", image_part(_garbage_png()))}, 422, "invalid_image"),
    "GIF": ({"messages": user("Hi", image_part(data_uri(b"GIF89a", "image/gif")))}, 422, "unsupported_image_type"),
    "GIF posing as PNG": (
        {"messages": user("Hi", image_part(data_uri(png_bytes(0, image_format="GIF"))))},
        422,
        "unsupported_image_type",
    ),
    "file URL": ({"messages": user("Hi", image_part("file:///etc/passwd"))}, 422, "invalid_image"),
    "assistant turn": (
        {"messages": [*question("Hi", 0), {"role": "assistant", "content": "Hello"}]},
        422,
        "unsupported",
    ),
    "unknown role": ({"messages": [{"role": "robot", "content": "Hi"}]}, 422, "invalid_value"),
    "image in a system message": (
        {"messages": [{"role": "system", "content": [image_part(data_uri(png_bytes(0)))]}, *user("Hi")]},
        422,
        "invalid_value",
    ),
    "stream": ({"messages": question("Hi", 0), "stream": True}, 422, "unsupported"),
    "n=2": ({"messages": question("Hi", 0), "n": 2}, 422, "unsupported"),
    "max_tokens 0": ({"messages": question("Hi", 0), "max_tokens": 0}, 422, "invalid_value"),
    "another model": ({"model": "gpt-4o", "messages": question("Hi", 0)}, 404, "model_not_found"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_get_json_4xx(server, case):
    body, status, code = MALFORMED[case]
    response = post(server.url, body, key=KEY, raw=body if isinstance(body, bytes) else None)
    assert (response.status_code, error_of(response)["code"]) == (status, code)


def test_unknown_paths_and_methods_get_json_errors(server):
    assert error_of(httpx.get(f"{server.url}/v1/nothing"))["code"] == "not_found"
    response = httpx.get(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


def png_header(width, height):
    """A PNG of only its signature, header and end chunks: it claims width x height pixels."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


SERVER_ERRORS = {
    "a data URI that is not base64": (
        {"messages": user("Hi", image_part("data:image/png,abc"))},
        (422, "invalid_image", "the data URI must be base64"),
    ),
    "content neither a string nor a list": (
        {"messages": [{"role": "user", "content": 5}]},
        (422, "invalid_value", "messages[0].content must be a string or a list of content parts"),
    ),
    "a content part that is not an object": (
        {"messages": [{"role": "user", "content": ["Hi"]}]},
        (422, "invalid_value", "messages[0].content[0] must be an object with a string 'type'"),
    ),
    "tools": (
        {"messages": question("Hi", 0), "tools": [{"type": "function", "function": {"name": "f"}}]},
        (422, "unsupported", "tools are not supported"),
    ),
    "a PNG claiming 10000 x 10000 pixels (PIL's bomb guard)": (
        {"messages": user("Hi", image_part(data_uri(png_header(10_000, 10_000))))},
        (413, "image_too_large", "image has more pixels than this server's limit"),
    ),
    "a truncated PNG": (
        {"messages": user("Hi", image_part(data_uri(png_bytes(0, size=(40, 40))[:400])))},
        (422, "invalid_image", "not a readable image"),
    ),
    "sigma past the noise space's largest": (
        {"messages": question("Hi", 0), "smoothguard": {"sigma": 4.5}},
        (422, "invalid_value", "over the largest sensible value in normalized space"),
    ),
}


@pytest.mark.parametrize("case", list(SERVER_ERRORS))
def test_the_server_refuses_in_one_line(plain_server, case):
    """Request errors no other test sends, each its status, code and message (no traceback). Mutations
    caught: a branch of messages.py / media.py / schemas.py answering another code or a 500; a library
    ConfigError (sigma past the space's largest) mapped to a 500 instead of 422 invalid_value."""
    body, expected = SERVER_ERRORS[case]
    refused(post(plain_server.url, body), *expected)


def test_a_chunked_body_over_the_limit_is_a_413(plain_server):
    """Without a Content-Length the body is counted as it streams in: 413 once it passes the limit."""
    chunks = (b" " * 20_000 for _ in range(4))  # 80,000 bytes, chunked
    response = httpx.post(f"{plain_server.url}/v1/chat/completions", content=chunks, timeout=30)
    assert "content-length" not in response.request.headers
    refused(response, 413, "body_too_large", f"over this server's limit of {BODY_LIMIT:,}")
