"""The guard proxy: a SmoothGuard server whose model is an upstream OpenAI-compatible endpoint (here a
``--no-defense`` SmoothGuard server of the tiny LLaVA on another loopback port)."""

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from server_support import error_of, fingerprint, post, question
from smoothguard import SmoothGuard, load_model
from smoothguard.cli import main
from smoothguard.server import BackgroundServer, ServerSettings, create_app

UPSTREAM_KEY = "sk-upstream-key"


@pytest.fixture(scope="module")
def upstream(tiny_llava):
    guard = SmoothGuard(tiny_llava, num_copies=0)
    settings = ServerSettings(model_name="tiny-llava", api_key=UPSTREAM_KEY, max_num_copies=0)
    with BackgroundServer(create_app(guard, settings)) as running:
        yield running


def proxy_app(upstream_url: str, minilm, settings: ServerSettings | None = None, **remote_options):
    """A proxy with a fixed seed (0) unless ``settings`` say otherwise."""
    model = load_model(f"openai:{upstream_url}/v1#tiny-llava", backoff=0.01, **remote_options)
    guard = SmoothGuard(model, sigma=0.05, num_copies=3, embedder=minilm)
    return create_app(guard, settings or ServerSettings(model_name="tiny-llava", fixed_seed=True))


@pytest.fixture(scope="module")
def proxy(upstream, minilm):
    with BackgroundServer(proxy_app(upstream.url, minilm, api_key=UPSTREAM_KEY)) as running:
        yield running


def client_of(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def ask(client, messages, **guard_options):
    return client.chat.completions.create(
        model="tiny-llava",
        messages=messages,
        max_tokens=6,
        extra_body={"smoothguard": {"return_candidates": True, **guard_options}},
    )


def test_proxy_end_to_end(proxy, upstream):
    completion = ask(client_of(proxy), question("What is in the image?", seed=0))
    evidence = completion.model_extra["smoothguard"]
    assert evidence["noise_space"] == "pixel" and evidence["num_candidates"] == 4 and evidence["defended"]
    assert completion.choices[0].message.content == evidence["candidates"][evidence["chosen_index"]]
    # The clean candidate is the upstream's own answer to the same request.
    direct = openai.OpenAI(base_url=f"{upstream.url}/v1", api_key=UPSTREAM_KEY, max_retries=0)
    plain = direct.chat.completions.create(
        model="tiny-llava", messages=question("What is in the image?", seed=0), max_tokens=6
    )
    assert evidence["candidates"][evidence["clean_index"]] == plain.choices[0].message.content
    assert httpx.get(f"{proxy.url}/health").json()["mode"] == "proxy"


def test_concurrent_requests_through_the_proxy(proxy):
    client = client_of(proxy)
    requests = [(question(f"Prompt {i}?", seed=20 + i), {"num_copies": 1 + i % 3}) for i in range(8)]
    alone = [fingerprint(ask(client, messages, **options)) for messages, options in requests]
    assert len({answer for answer, _ in alone}) >= 4
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda request: fingerprint(ask(client, request[0], **request[1])), requests))
    assert together == alone


def test_upstream_down_is_a_502(minilm):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with BackgroundServer(proxy_app(url, minilm, max_retries=1)) as proxy:
        response = post(proxy.url, {"messages": question("Hi", seed=0)})
    error = error_of(response)
    assert response.status_code == 502 and error["code"] == "upstream_error" and error["upstream_status"] is None
    assert "cannot reach" in error["message"]


def test_upstream_refusal_is_a_502_with_its_status(upstream, minilm):
    with BackgroundServer(proxy_app(upstream.url, minilm, api_key="sk-wrong-key")) as proxy:
        response = post(proxy.url, {"messages": question("Hi", seed=0)})
    error = error_of(response)
    assert (response.status_code, error["upstream_status"]) == (502, 401)
    assert "sk-wrong-key" not in response.text


def test_generate_command_runs_against_a_remote_model(upstream, image_file, capsys, monkeypatch):
    monkeypatch.setenv("SMOOTHGUARD_REMOTE_API_KEY", UPSTREAM_KEY)
    model = f"openai:{upstream.url}/v1#tiny-llava"
    args = ["--image", str(image_file), "--prompt", "Hi", "--num-copies", "2", "--max-new-tokens", "4", "--json"]
    assert main(["generate", "--model", model, *args]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["candidates"]) == 3 and result["config"]["noise_space"] == "pixel"
    assert result["config"]["model"]["family"] == "openai"


def test_fresh_seeds_and_the_byte_limit_through_the_proxy(upstream, minilm):
    settings = ServerSettings(model_name="tiny-llava", max_prompt_tokens=12)
    with BackgroundServer(proxy_app(upstream.url, minilm, settings, api_key=UPSTREAM_KEY)) as proxy:
        client = client_of(proxy)
        first, second = (ask(client, question("Hi?", seed=0)).model_extra["smoothguard"] for _ in range(2))
        assert first["seed_source"] == second["seed_source"] == "random" and first["seed"] != second["seed"]
        assert first["time_budget_exceeded"] is False
        again = ask(client, question("Hi?", seed=0), seed=first["seed"]).model_extra["smoothguard"]
        assert again["candidates"] == first["candidates"]
        # A proxy counts the prompt's UTF-8 bytes: 7 characters, 14 bytes.
        response = post(proxy.url, {"messages": question("\u00e9" * 7, seed=0)})
        error = error_of(response)
        assert (response.status_code, error["code"]) == (413, "prompt_too_long")
        assert "14 UTF-8 bytes" in error["message"] and "12 UTF-8 bytes (--max-prompt-tokens)" in error["message"]
        assert post(proxy.url, {"messages": question("\u00e9" * 6, seed=0)}).status_code == 200
