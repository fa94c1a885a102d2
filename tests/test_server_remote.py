"""The remote backend: ``load_model("openai:URL#NAME")``, order, bounded concurrency, retries, timeouts,
and SmoothGuard driving it (against a scripted upstream on loopback)."""

import base64
import io
import socket

import pytest
import torch
from PIL import Image

from server_support import ScriptedUpstream, png_bytes
from smoothguard import ConfigError, SmoothGuard, UnsupportedError, load_model
from smoothguard.inputs import load_image
from smoothguard.models.remote import RemoteAdapter, parse_remote, png_data_uri
from smoothguard.openai_client import UpstreamError
from smoothguard.server import BackgroundServer


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
