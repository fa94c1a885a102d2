"""``smoothguard serve`` for a local model: real uvicorn servers on 127.0.0.1, the official ``openai``
client as the client. Answers and metadata, overrides, auth, every limit, malformed requests, image
URLs, audio, concurrent requests that must not mix, the prompt limit, the time budget and per-request
seeds (``test_server_urls.py`` has the URL normalisation)."""

import base64
import io
import json
import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from PIL import Image

from smoothguard import SmoothGuard, load_model
from smoothguard.inputs import load_image
from smoothguard.models.tiny import save_tiny_qwen2_audio
from smoothguard.server import BackgroundServer, ServerSettings, create_app
from smoothguard.server.service import request_noise_id
from support.guard import Recorder
from support.server import (
    KEY,
    LIMITS,
    QuietHandler,
    ask,
    data_uri,
    error_of,
    fingerprint,
    image_part,
    png_bytes,
    post,
    question,
    user,
)


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


def test_server_reports_the_purifier_and_the_parsed_votes(tiny_llava):
    """``serve`` with a purifier and a parsed vote: /health and every answer's evidence name them."""
    import httpx

    from smoothguard.server import BackgroundServer, ServerSettings, create_app
    from support.server import post, question

    guard = SmoothGuard(tiny_llava, purifier=Recorder(), sigma=0.1, num_copies=2, vote="parsed", parser="yes-no")
    with BackgroundServer(create_app(guard, ServerSettings(model_name="tiny", fixed_seed=True))) as running:
        health = httpx.get(f"{running.url}/health", timeout=30).json()
        answer = post(running.url, {"model": "tiny", "messages": question("Is it red?", seed=1), "max_tokens": 3})
    assert health["purifier"] == "recorder" and health["noise_space"] == "pixel" and health["vote"] == "parsed"
    evidence = answer.json()["smoothguard"]
    assert evidence["purifier"] == "recorder" and evidence["vote"] == "parsed"
    assert sum(evidence["votes"].values()) == 3 and set(evidence["votes"]) <= {"yes", "no"}
