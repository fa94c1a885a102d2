"""The guard proxy: a SmoothGuard server whose model is an upstream OpenAI-compatible endpoint (here a
``--no-defense`` SmoothGuard server of the tiny LLaVA on another loopback port)."""

import base64
import io
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from PIL import Image

from smoothguard import ConfigError, SmoothGuard, UnsupportedError, load_model
from smoothguard.inputs import load_image
from smoothguard.models.remote import RemoteAdapter, parse_remote, png_data_uri
from smoothguard.openai_client import UpstreamError
from smoothguard.server import BackgroundServer, ServerSettings, create_app
from support.guard import grey
from support.server import ScriptedUpstream, error_of, fingerprint, png_bytes, post, question, refused

UPSTREAM_KEY = "sk-upstream-key"


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


def remote(server: BackgroundServer, **options) -> RemoteAdapter:
    return load_model(f"openai:{server.url}/v1#scripted", **options)


def queries(adapter: RemoteAdapter, count: int) -> list:
    return [adapter.encode(f"q{i}", torch.full((3, 4, 5), i / count)) for i in range(count)]


def expected(query) -> str:
    png = base64.b64decode(png_data_uri(query.media["pixels"][0]).partition(",")[2])
    return ScriptedUpstream.answer(bytes(query.text["input_ids"][0].tolist()).decode(), png)


def load_image_bytes(png: bytes) -> torch.Tensor:
    return load_image(Image.open(io.BytesIO(png)))


def test_parse_remote_syntax():
    assert parse_remote("openai:http://127.0.0.1:8000/v1/#llava-hf/llava-1.5-7b-hf") == (
        "http://127.0.0.1:8000/v1",
        "llava-hf/llava-1.5-7b-hf",
    )
    for bad in ("openai:127.0.0.1:8000#m", "openai:http://h/v1", "openai:http://h/v1#", "openai:ftp://h#m"):
        with pytest.raises(ConfigError, match="openai:http"):
            parse_remote(bad)
    with pytest.raises(ConfigError, match="credentials"):
        parse_remote("openai:http://user:secret@h/v1#m")


def test_load_model_gives_a_pixel_space_remote_adapter():
    adapter = load_model("openai:http://127.0.0.1:9/v1#m", timeout=1.0)
    assert isinstance(adapter, RemoteAdapter) and adapter.default_noise_space == "pixel"
    assert SmoothGuard(adapter, num_copies=0).noise.space == "pixel"
    with pytest.raises(ConfigError, match="noise space 'normalized'"):
        SmoothGuard(adapter, noise_space="normalized")
    for local_only in ("model", "processor", "tokenizer"):
        with pytest.raises(UnsupportedError, match="no local weights"):
            getattr(adapter, local_only)
    with pytest.raises(ConfigError, match="device"):
        load_model("openai:http://127.0.0.1:9/v1#m", device="cuda")
    with pytest.raises(ConfigError, match="not retries"):
        load_model("openai:http://127.0.0.1:9/v1#m", retries=3)


def test_answers_keep_query_order_under_bounded_concurrency():
    # Each request is held until 3 are in flight (the gate: no sleeps that must overlap), then later
    # queries answer first; at most 3 requests may be in flight.
    upstream = ScriptedUpstream(gate=3, delay=lambda prompt: 0.005 * (9 - int(prompt[1:])))
    with BackgroundServer(upstream.app) as server:
        adapter = remote(server, max_concurrency=3)
        batch = queries(adapter, 9)
        assert adapter.generate(batch, max_new_tokens=4) == [expected(q) for q in batch]
    assert upstream.max_in_flight == 3


def test_retries_with_backoff_then_gives_up():
    upstream = ScriptedUpstream(fail_first=2, fail_status=503)
    with BackgroundServer(upstream.app) as server:
        adapter = remote(server, max_retries=2, backoff=0.01)
        batch = queries(adapter, 2)
        assert adapter.generate(batch) == [expected(q) for q in batch]
        assert upstream.calls == {"q0": 3, "q1": 3}
        upstream.calls.clear()
        with pytest.raises(UpstreamError, match="HTTP 503") as failure:
            remote(server, max_retries=1, backoff=0.01).generate(batch)
    assert failure.value.status == 503


def test_client_errors_are_not_retried():
    upstream = ScriptedUpstream(fail_first=5, fail_status=400)
    with BackgroundServer(upstream.app) as server:
        adapter = remote(server, max_retries=3, backoff=0.01)
        with pytest.raises(UpstreamError, match="scripted failure") as failure:
            adapter.generate(queries(adapter, 1))
    assert failure.value.status == 400 and upstream.calls["q0"] == 1


def test_timeout_and_unreachable_upstream():
    upstream = ScriptedUpstream(hold=True)  # answers nothing until released: the timeout must fire
    with BackgroundServer(upstream.app) as server:
        adapter = remote(server, timeout=0.2, max_retries=0)
        try:
            with pytest.raises(UpstreamError, match="ReadTimeout") as failure:
                adapter.generate(queries(adapter, 2))
        finally:
            upstream.release()
        assert failure.value.status is None
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    adapter = load_model(f"openai:http://127.0.0.1:{port}/v1#m", max_retries=1, backoff=0.01)
    with pytest.raises(UpstreamError, match="cannot reach") as failure:
        adapter.generate(queries(adapter, 3))
    assert failure.value.status is None


def test_unknown_generation_options_are_refused():
    adapter = load_model("openai:http://127.0.0.1:9/v1#m")
    with pytest.raises(UnsupportedError, match="num_beams"):
        adapter.generate([], num_beams=2)


def test_smoothguard_drives_a_remote_model(minilm):
    upstream = ScriptedUpstream()
    with BackgroundServer(upstream.app) as server:
        guard = SmoothGuard(remote(server), sigma=0.05, num_copies=3, embedder=minilm)
        png = png_bytes(1)
        result = guard.generate("What is here?", image=load_image_bytes(png), max_new_tokens=8)
    assert len(result.candidates) == 4 and upstream.calls["What is here?"] == 4
    # The clean candidate travels losslessly: an 8-bit PNG in, the same pixels out.
    clean_png = base64.b64decode(png_data_uri(load_image_bytes(png)).partition(",")[2])
    assert result.clean_text == ScriptedUpstream.answer("What is here?", clean_png)
    assert len(set(result.candidates)) == 4  # every noisy copy is a different image
    assert result.config["model"] == {
        "name": f"openai:{server.url}/v1#scripted",
        "family": "openai",
        "modality": "image",
        "endpoint": f"{server.url}/v1",
    }


def test_a_remote_model_has_no_tokens_to_teacher_force():
    """A model behind an OpenAI-compatible endpoint owns its tokenizer and template: no attack can
    teacher-force it, and asking says so in one line instead of guessing ids."""
    from smoothguard.errors import UnsupportedError
    from smoothguard.models.remote import RemoteAdapter

    remote = RemoteAdapter("http://127.0.0.1:9/v1", "llava-hf/llava-1.5-7b-hf")
    with pytest.raises(UnsupportedError, match="remote model: no local weights or tokenizer"):
        remote.answer_ids("What is in the image?", "the secret password is swordfish.")


def test_a_remote_model_gets_the_purified_copies(image_file):
    """The guard proxy's path: pixel copies are purified before they are encoded and sent upstream. The
    scripted upstream answers with a hash of the image it got: an erasing purifier makes every image the
    same (mutation: purifier skipped for remote models -> four different images)."""
    from smoothguard import load_model
    from smoothguard.server import BackgroundServer
    from support.server import ScriptedUpstream

    upstream = ScriptedUpstream()
    with BackgroundServer(upstream.app) as server:
        model = load_model(f"openai:{server.url}/v1#scripted")
        plain = SmoothGuard(model, sigma=0.2, num_copies=3, vote="parsed", parser="refusal")
        erased = SmoothGuard(model, plain.config.replace(purifier=None), purifier=grey)
        noisy = plain.generate("q", image=image_file, max_new_tokens=4).candidates
        purified = erased.generate("q", image=image_file, max_new_tokens=4).candidates
    assert len(set(noisy)) == 4 and len(set(purified)) == 1


def test_a_remote_models_copies_wait_as_8_bit_images():
    remote = load_model("openai:http://127.0.0.1:9/v1#m")  # nothing is sent: only preprocessing is used
    pixels = remote.preprocess(torch.rand(2, 3, 8, 8))["pixels"]
    assert pixels.dtype == torch.uint8 and pixels.shape == (2, 3, 8, 8)


class BrokenUpstream:
    """An OpenAI-compatible endpoint that fails as the prompt says: ``html`` (200, not JSON), ``empty``
    (200, JSON without choices), ``down`` (503 every time), ``slow`` (no answer until released)."""

    def __init__(self):
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, Response

        self.released = threading.Event()
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        def complete(body: dict) -> Response:
            prompt = next(part["text"] for part in body["messages"][0]["content"] if part["type"] == "text")
            if prompt == "slow":
                self.released.wait(30)
            if prompt == "html":
                return Response("<html>maintenance</html>", media_type="text/html")
            if prompt == "empty":
                return JSONResponse({"object": "chat.completion", "choices": []})
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)


UPSTREAM_FAILURES = {
    "html": (200, "did not answer with JSON"),
    "empty": (200, "sent no choices[0].message.content"),
    "down": (503, "HTTP 503"),
    "slow": (None, "ReadTimeout"),
}


@pytest.mark.parametrize("prompt", list(UPSTREAM_FAILURES))
def test_a_failing_upstream_is_a_502_through_the_proxy(prompt):
    """The proxy's client gets a one-line 502 ``upstream_error`` with the upstream's status (null when
    it gave none: a timeout) for an upstream that answers HTML, JSON without choices, 503 after the
    retry, or nothing within the timeout."""
    upstream = BrokenUpstream()
    with BackgroundServer(upstream.app) as endpoint:
        model = load_model(f"openai:{endpoint.url}/v1#broken", timeout=0.5, max_retries=1, backoff=0.01)
        settings = ServerSettings(model_name="broken", max_num_copies=0)
        try:
            with BackgroundServer(create_app(SmoothGuard(model, num_copies=0), settings)) as proxy:
                response = post(proxy.url, {"messages": question(prompt, seed=0)})
        finally:
            upstream.released.set()
    status, fragment = UPSTREAM_FAILURES[prompt]
    error = refused(response, 502, "upstream_error", fragment)
    assert error["upstream_status"] == status
