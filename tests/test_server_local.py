"""``smoothguard serve`` for a local model: real uvicorn servers on 127.0.0.1, the official ``openai``
client as the client. Answers and metadata, overrides, auth, every limit, malformed requests, image
URLs, audio, concurrent requests that must not mix, the prompt limit, the time budget and per-request
seeds (``test_server_urls.py`` has the URL normalisation)."""

import base64
import functools
import io
import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from PIL import Image

from server_support import data_uri, error_of, fingerprint, image_part, png_bytes, post, question, user
from smoothguard import SmoothGuard, load_model
from smoothguard.inputs import load_image
from smoothguard.models.tiny import save_tiny_qwen2_audio
from smoothguard.server import BackgroundServer, ServerSettings, create_app
from smoothguard.server.service import request_noise_id

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


class QuietHandler(SimpleHTTPRequestHandler):
    requested: ClassVar[list[str]] = []  # every path asked for, across instances

    def do_GET(self) -> None:
        self.requested.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def image_host(tmp_path_factory):
    """A loopback web server with ``allowed/ok.png`` and ``secret.png``; yields its base URL."""
    folder = tmp_path_factory.mktemp("static")
    (folder / "allowed").mkdir()
    (folder / "allowed" / "ok.png").write_bytes(png_bytes(3))
    (folder / "secret.png").write_bytes(png_bytes(4))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(tiny_llava, minilm, image_host):
    # A fixed seed (0), so that answers can be compared with the library's and across requests.
    guard = SmoothGuard(tiny_llava, sigma=0.1, num_copies=2, embedder=minilm)
    settings = ServerSettings(**LIMITS, allow_url_prefixes=(f"{image_host}allowed/",), fixed_seed=True)
    with BackgroundServer(create_app(guard, settings)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def ask(client, messages, model="tiny", **guard_options):
    options = {"return_candidates": True, **guard_options}
    return client.chat.completions.create(model=model, messages=messages, extra_body={"smoothguard": options})


def test_chat_completion_returns_the_guarded_answer_and_its_evidence(client, tiny_llava, minilm):
    completion = ask(client, question("What is in the image?", seed=0))
    assert completion.object == "chat.completion" and completion.model == "tiny"
    assert completion.id.startswith("chatcmpl-") and completion.choices[0].message.role == "assistant"
    evidence = completion.model_extra["smoothguard"]
    assert evidence["defended"] and evidence["num_candidates"] == 3 and evidence["num_copies"] == 2
    assert evidence["noise_space"] == "normalized" and evidence["sigma"] == 0.1 and evidence["seed"] == 0
    assert 0 < evidence["majority_fraction"] <= 1 and len(evidence["cluster_labels"]) == 3
    assert completion.choices[0].message.content == evidence["candidates"][evidence["chosen_index"]]
    assert {"decode", "queue", "generate", "embed", "cluster", "total"} <= set(evidence["timings"])
    # The server answers exactly as the library does for the same image, prompt and settings, the request's
    # seed naming its noise (``request_noise_id``).
    pixels = load_image(Image.open(io.BytesIO(png_bytes(0))))
    direct = SmoothGuard(tiny_llava, sigma=0.1, num_copies=2, embedder=minilm).generate(
        "What is in the image?",
        image=pixels,
        max_new_tokens=6,
        query_id=request_noise_id(evidence["seed"], "What is in the image?", pixels),
    )
    assert evidence["candidates"] == direct.candidates and completion.choices[0].message.content == direct.text


def test_overrides_within_limits(client):
    completion = ask(client, question("Describe it.", seed=1), num_copies=5, sigma=0.3, seed=7)
    evidence = completion.model_extra["smoothguard"]
    assert (evidence["num_copies"], evidence["sigma"], evidence["seed"], len(evidence["candidates"])) == (5, 0.3, 7, 6)
    plain = client.chat.completions.create(model="tiny", messages=question("Describe it.", seed=1), max_tokens=3)
    assert "candidates" not in plain.model_extra["smoothguard"]


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


@pytest.mark.parametrize(
    ("name", "status", "code", "param"),
    [
        ("body", 413, "body_too_large", None),
        ("pixels", 413, "image_too_large", "messages[0].content[1]"),
        ("num_copies", 422, "num_copies_too_large", "smoothguard.num_copies"),
        ("sigma", 422, "sigma_too_large", "smoothguard.sigma"),
        ("max_tokens", 422, "max_tokens_too_large", "max_tokens"),
    ],
)
def test_limits(server, name, status, code, param):
    body = {"model": "tiny", "messages": question("Hi", seed=0)}
    if name == "body":
        body["messages"][0]["content"][0]["text"] = "x" * 300_000
    elif name == "pixels":
        body["messages"] = user("Hi", image_part(data_uri(png_bytes(0, size=(100, 100)))))
    elif name == "max_tokens":
        body["max_tokens"] = 17
    else:
        body["smoothguard"] = {"num_copies": 7} if name == "num_copies" else {"sigma": 0.6}
    response = post(server.url, body, key=KEY)
    error = error_of(response)
    assert (response.status_code, error["code"], error["param"]) == (status, code, param)


def _limit_case(name, at_limit):
    """A request at a limit (``at_limit``) or just past it: the body, the image's pixels, num_copies, sigma."""
    body = {"model": "tiny", "messages": question("Hi", seed=0), "max_tokens": 2}
    if name == "pixels":
        size = (80, 80) if at_limit else (80, 81)  # max_image_pixels 6400
        body["messages"] = user("Hi", image_part(data_uri(png_bytes(0, size=size))))
    elif name == "num_copies":
        body["smoothguard"] = {"num_copies": LIMITS["max_num_copies"] + (0 if at_limit else 1)}
    elif name == "sigma":
        limit = LIMITS["max_sigma"]
        body["smoothguard"] = {"sigma": limit if at_limit else math.nextafter(limit, math.inf)}
    raw = json.dumps(body).encode()
    if name == "body":  # pad with JSON whitespace to exactly max_body_bytes, or one byte more
        raw += b" " * (LIMITS["max_body_bytes"] - len(raw) + (0 if at_limit else 1))
        assert len(raw) == LIMITS["max_body_bytes"] + (0 if at_limit else 1)
    return raw


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("body", 413, "body_too_large"),
        ("pixels", 413, "image_too_large"),
        ("num_copies", 422, "num_copies_too_large"),
        ("sigma", 422, "sigma_too_large"),
    ],
)
def test_limit_values_themselves_are_accepted_and_just_above_refused(server, name, status, code):
    """Mutations caught: each server limit off by one (``>`` turned into ``>=``, or the bound shifted): a
    body of exactly max_body_bytes, an image of exactly max_image_pixels, num_copies and sigma at exactly
    the server's limits are answered; one byte, one pixel row, one copy, the next float above are refused."""
    accepted = post(server.url, None, key=KEY, raw=_limit_case(name, True))
    assert accepted.status_code == 200, accepted.text
    evidence = accepted.json()["smoothguard"]
    if name in ("num_copies", "sigma"):
        assert evidence[name] == LIMITS[f"max_{name}"]
    refused = post(server.url, None, key=KEY, raw=_limit_case(name, False))
    assert (refused.status_code, error_of(refused)["code"]) == (status, code)


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


def test_http_image_urls_need_an_allowed_prefix(server, image_host):
    def ask_url(url):
        return post(server.url, {"messages": user("Hi", image_part(url))}, key=KEY)

    refused = ask_url(f"{image_host}secret.png")
    assert refused.status_code == 422 and error_of(refused)["code"] == "image_url_not_allowed"
    assert "data: URI" in error_of(refused)["message"]
    assert ask_url(f"{image_host}allowed/ok.png").status_code == 200
    missing = ask_url(f"{image_host}allowed/missing.png")
    assert missing.status_code == 422 and error_of(missing)["code"] == "image_fetch_failed"


def test_concurrent_requests_are_answered_as_if_alone(client):
    requests = [
        (question(f"Question {i}: what do you see?", seed=10 + i), {"num_copies": i % 4, "sigma": 0.05 * (1 + i % 3)})
        for i in range(8)
    ]
    alone = [fingerprint(ask(client, messages, **options)) for messages, options in requests]
    assert len({answer for answer, _ in alone}) >= 4  # the answers differ, so a mix-up would show
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda request: fingerprint(ask(client, request[0], **request[1])), requests))
    assert together == alone


def test_no_defense_server(tiny_llava):
    guard = SmoothGuard(tiny_llava, num_copies=0)
    with BackgroundServer(create_app(guard, ServerSettings(model_name="plain", max_num_copies=0))) as plain:
        client = openai.OpenAI(base_url=f"{plain.url}/v1", api_key="unused", max_retries=0)
        completion = client.chat.completions.create(model="plain", messages=question("Hi", seed=0), max_tokens=4)
        evidence = completion.model_extra["smoothguard"]
        assert not evidence["defended"] and evidence["num_candidates"] == 1 and evidence["embedder"] is None
        with pytest.raises(openai.UnprocessableEntityError, match="no-defense"):
            ask(client, question("Hi", seed=0), model="plain", num_copies=2)


def test_audio_model_takes_input_audio(tmp_path, minilm):
    model = load_model(save_tiny_qwen2_audio(tmp_path / "audio"))
    buffer = io.BytesIO()
    sf.write(buffer, np.sin(np.linspace(0, 200, 8000)).astype(np.float32) * 0.5, 8000, format="WAV")
    audio = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(buffer.getvalue()).decode(), "format": "wav"},
    }
    guard = SmoothGuard(model, sigma=0.01, num_copies=1, embedder=minilm)
    with BackgroundServer(create_app(guard)) as running:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused", max_retries=0)
        completion = client.chat.completions.create(model=model.name, messages=user("What?", audio), max_tokens=3)
        assert completion.model_extra["smoothguard"]["noise_space"] == "waveform"
        response = post(running.url, {"messages": question("What?", seed=0)})
        assert response.status_code == 422 and error_of(response)["code"] == "wrong_modality"


def test_a_prompt_over_the_limit_is_a_413_before_the_image_is_fetched(server, image_host):
    ok = f"{image_host}allowed/ok.png"
    QuietHandler.requested.clear()
    for prompt, size in (("tok " * 70, "tokens"), ("x" * (64 * 64 + 1), "characters")):
        response = post(server.url, {"messages": user(prompt, image_part(ok))}, key=KEY)
        error = error_of(response)
        assert (response.status_code, error["code"], error["param"]) == (413, "prompt_too_long", "messages")
        assert "64 tokens (--max-prompt-tokens)" in error["message"] and size in error["message"]
    assert QuietHandler.requested == []  # refused before the image was fetched
    # Texts count together; a prompt of the limit passes.
    body = {"messages": [{"role": "system", "content": "tok " * 40}, *user("tok " * 40, image_part(ok))]}
    assert post(server.url, body, key=KEY).status_code == 413
    assert post(server.url, {"messages": user("tok " * 20, image_part(ok))}, key=KEY).status_code == 200


@pytest.fixture
def new_tokens(tiny_llava, monkeypatch):
    """Records how many tokens each HF ``generate`` call of the tiny LLaVA generated per candidate."""
    counts: list[int] = []
    generate = tiny_llava.model.generate

    def counting(**batch):
        output = generate(**batch)
        counts.append(output.shape[1] - batch["input_ids"].shape[1])
        return output

    monkeypatch.setattr(tiny_llava.model, "generate", counting)
    return counts


def test_the_time_budget_stops_generation_and_says_so(tiny_llava, minilm, client, new_tokens):
    body = {"messages": question("Describe it.", seed=0), "max_tokens": 12, "smoothguard": {"seed": 1}}
    guard = SmoothGuard(tiny_llava, sigma=0.1, num_copies=2, embedder=minilm)
    settings = ServerSettings(default_max_new_tokens=12, request_timeout=1e-6)
    with BackgroundServer(create_app(guard, settings)) as hurried:
        cut = post(hurried.url, body)
        assert cut.status_code == 200, cut.text
        assert httpx.get(f"{hurried.url}/health").json()["request_timeout"] == 1e-6
    evidence = cut.json()["smoothguard"]
    assert evidence["time_budget_exceeded"] is True and evidence["request_timeout"] == 1e-6
    assert new_tokens == [1]  # one generate call for all 3 candidates, stopped after its first token
    new_tokens.clear()
    # One budget for the whole request: with one candidate per generate call, every call is cut.
    with BackgroundServer(create_app(guard.replace(batch_size=1), settings)) as hurried:
        assert post(hurried.url, body).json()["smoothguard"]["time_budget_exceeded"] is True
    assert new_tokens == [1, 1, 1]
    new_tokens.clear()
    full = ask(client, question("Describe it.", seed=0), seed=1)
    assert full.model_extra["smoothguard"]["time_budget_exceeded"] is False
    assert new_tokens == [6]  # the module server's default max_tokens, not cut


def test_fresh_noise_per_request_unless_the_seed_is_fixed(tiny_llava, minilm):
    messages = question("What do you see?", seed=5)
    guard = SmoothGuard(tiny_llava, sigma=0.5, num_copies=4, embedder=minilm, seed=5)
    with BackgroundServer(create_app(guard, ServerSettings(default_max_new_tokens=4))) as fresh:
        client = openai.OpenAI(base_url=f"{fresh.url}/v1", api_key="unused", max_retries=0)
        first, second = (ask(client, messages, model=tiny_llava.name).model_extra["smoothguard"] for _ in range(2))
        assert first["seed_source"] == second["seed_source"] == "random"
        assert first["seed"] != second["seed"] and 0 <= first["seed"] < 2**32
        assert httpx.get(f"{fresh.url}/health").json()["seed_policy"] == "per_request"
        # The returned seed reproduces the answer.
        again = ask(client, messages, model=tiny_llava.name, seed=first["seed"]).model_extra["smoothguard"]
        assert again["seed_source"] == "request" and again["candidates"] == first["candidates"]
    with BackgroundServer(create_app(guard, ServerSettings(default_max_new_tokens=4, fixed_seed=True))) as fixed:
        client = openai.OpenAI(base_url=f"{fixed.url}/v1", api_key="unused", max_retries=0)
        first, second = (ask(client, messages, model=tiny_llava.name).model_extra["smoothguard"] for _ in range(2))
        assert first["seed"] == second["seed"] == 5 and first["seed_source"] == "server"
        assert first["candidates"] == second["candidates"]
        assert httpx.get(f"{fixed.url}/health").json()["seed_policy"] == "fixed"


def test_finish_reason_and_usage_follow_the_openai_protocol(server):
    body = {"model": "tiny", "messages": question("What is in the image?", seed=1), "max_tokens": 2}
    answer = post(server.url, {**body, "smoothguard": {"return_candidates": True}}, key=KEY)
    assert answer.status_code == 200
    data = answer.json()
    usage, evidence = data["usage"], data["smoothguard"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 2 and usage["prompt_tokens"] > 10  # the image's tokens count
    # The tiny random model never ends its answer by itself: 2 tokens is where max_tokens cut it.
    assert data["choices"][0]["finish_reason"] == ("length" if usage["completion_tokens"] == 2 else "stop")
    assert evidence["usage"]["prompt_tokens"] == 3 * usage["prompt_tokens"]  # 2 noisy copies + the clean one
    assert usage["completion_tokens"] <= evidence["usage"]["completion_tokens"] <= 3 * 2
