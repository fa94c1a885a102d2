"""The one OpenAI-compatible client: endpoint URL forms, retries (which statuses, how many, when to stop),
the API-key and error messages, malformed completions, timeouts, and no proxy for loopback hosts, all
against a scripted HTTP server on 127.0.0.1 (and, for the proxy check, that server acting as a proxy)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from smoothguard.errors import ConfigError, SmoothGuardError
from smoothguard.openai_client import (
    RETRY_STATUSES,
    ChatReply,
    OpenAIClient,
    UpstreamError,
    chat_endpoint,
    is_loopback,
    is_loopback_host,
)

PAYLOAD = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


#: A script entry that never answers (until the test ends): the client's timeout must fire.
HOLD = "hold"


def completion(content: Any) -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": message}]}


class Scripted:
    """Answers the n-th POST with ``script[n]`` (the last entry repeats): ``(status, body)`` with a dict
    body sent as JSON and a str/bytes body sent as text, a plain str for a 200 completion with that
    content, or :data:`HOLD`. Keeps every request as ``(path, headers, body)``."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.release = threading.Event()
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                scripted.requests.append((self.path, dict(self.headers), body))
                entry = scripted.script[min(len(scripted.requests), len(scripted.script)) - 1]
                if entry == HOLD:
                    scripted.release.wait(30)
                    return
                status, reply = (200, completion(entry)) if isinstance(entry, str) else entry
                data = json.dumps(reply).encode() if isinstance(reply, dict) else reply
                data = data.encode() if isinstance(data, str) else data
                self.send_response(status)
                kind = "application/json" if isinstance(reply, dict) else "text/plain; charset=utf-8"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def paths(self) -> list[str]:
        return [path for path, _, _ in self.requests]


@contextmanager
def scripted(*script: Any) -> Iterator[Scripted]:
    server = Scripted(list(script))
    thread = threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.server.shutdown()
        server.server.server_close()


def closed_port_url() -> str:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{closed.getsockname()[1]}"


def failure(client: OpenAIClient, **options: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as raised:
        client.chat(PAYLOAD, **options)
    return raised.value


@pytest.mark.parametrize("status", sorted(s for s in RETRY_STATUSES if s is not None))
def test_retries_transient_statuses_then_succeeds(status):
    with scripted((status, {"error": {"message": "busy"}}), (status, "busy"), " ok ") as server:
        client = OpenAIClient(f"{server.url}/v1", max_retries=2, backoff=0)
        assert client.chat(PAYLOAD).content == " ok "  # the content as sent; callers strip if they want
    assert server.paths == ["/v1/chat/completions"] * 3
    assert all(body == PAYLOAD for _, _, body in server.requests)


def test_gives_up_after_max_retries_with_the_last_status():
    with scripted((503, {"error": {"message": "overloaded"}})) as server:
        error = failure(OpenAIClient(f"{server.url}/v1", max_retries=1, backoff=0))
    assert len(server.requests) == 2 and error.status == 503 and error.detail == "overloaded"
    assert str(error) == f"{server.url}/v1/chat/completions answered HTTP 503: overloaded"
    assert isinstance(error, SmoothGuardError)


@pytest.mark.parametrize("status", [400, 404, 422, 501])
def test_other_statuses_are_not_retried(status):
    with scripted((status, {"error": {"message": "bad request body"}}), "never") as server:
        error = failure(OpenAIClient(f"{server.url}/v1", max_retries=3, backoff=0))
    assert len(server.requests) == 1 and error.status == status
    assert f"answered HTTP {status}: bad request body" in str(error)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_is_named_and_not_retried(status):
    with scripted((status, {"error": {"message": "Incorrect API key provided"}})) as server:
        error = failure(OpenAIClient(f"{server.url}/v1", api_key="sk-secret", max_retries=3, backoff=0))
    assert len(server.requests) == 1 and error.status == status
    assert f"refused the API key (HTTP {status}): Incorrect API key provided" in str(error)
    assert "sk-secret" not in str(error)
    assert server.requests[0][1]["Authorization"] == "Bearer sk-secret"


def test_no_key_sends_no_authorization_header():
    with scripted("ok") as server:
        assert OpenAIClient(f"{server.url}/v1").chat(PAYLOAD).content == "ok"
    headers = server.requests[0][1]
    assert "Authorization" not in headers and headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"error": {"message": "  model not found  ", "type": "invalid_request_error"}}, "model not found"),
        ({"error": "plain error string"}, "plain error string"),
        ({"detail": "FastAPI style"}, "{'detail': 'FastAPI style'}"),
        ("Bad Gateway from nginx", "Bad Gateway from nginx"),
        ("", "(empty body)"),
        ("x" * 1000, "x" * 300),
    ],
)
def test_the_upstream_error_message_is_extracted_and_shortened(body, detail):
    with scripted((400, body)) as server:
        error = failure(OpenAIClient(f"{server.url}/v1"))
    assert error.detail == detail and str(error).endswith(f"answered HTTP 400: {detail}")


def test_a_body_that_is_not_json_fails_at_once():
    with scripted((200, "<html>a login page</html>")) as server:
        error = failure(OpenAIClient(f"{server.url}/v1", max_retries=3, backoff=0))
    assert len(server.requests) == 1 and error.status == 200
    assert "did not answer with JSON" in str(error)


@pytest.mark.parametrize(
    "body",
    [{"object": "chat.completion"}, {"choices": []}, {"choices": [{"index": 0}]}, {"choices": [{"message": {}}]}],
)
def test_a_completion_without_choices_content_fails_at_once(body):
    with scripted((200, body)) as server:
        error = failure(OpenAIClient(f"{server.url}/v1", max_retries=3, backoff=0))
    assert len(server.requests) == 1 and error.status == 200
    assert "sent no choices[0].message.content" in str(error)


def test_non_text_content_fails_and_null_content_is_empty():
    parts = [{"type": "text", "text": "hi"}]
    with scripted((200, completion(parts)), (200, completion(None))) as server:
        client = OpenAIClient(f"{server.url}/v1", max_retries=3, backoff=0)
        error = failure(client)
        assert error.status == 200 and "sent a non-text message content: [{'type': 'text'" in str(error)
        assert client.chat(PAYLOAD).content == ""
    assert len(server.requests) == 2


def test_the_reply_carries_finish_reason_and_usage():
    full = completion("cut sho")
    full["choices"][0]["finish_reason"] = "length"
    full["usage"] = {"prompt_tokens": 612, "completion_tokens": 4, "total_tokens": 616}
    odd = completion("ok")
    odd["usage"] = {"prompt_tokens": "many", "completion_tokens": -1}
    with scripted((200, full), (200, odd), "plain") as server:
        client = OpenAIClient(f"{server.url}/v1")
        assert client.chat(PAYLOAD) == ChatReply("cut sho", "length", 612, 4)
        assert client.chat(PAYLOAD) == ChatReply("ok", None, None, None)  # nonsense counts are dropped
        assert client.chat(PAYLOAD) == ChatReply("plain")


def test_unreachable_endpoint_is_retried_then_reported():
    url = closed_port_url()
    error = failure(OpenAIClient(f"{url}/v1", max_retries=1, backoff=0))
    assert error.status is None and error.detail.startswith("ConnectError")
    assert str(error).startswith(f"cannot reach {url}/v1/chat/completions (ConnectError")


def test_a_timeout_is_retried_then_reported():
    with scripted(HOLD, "late but fine") as server:
        assert (
            OpenAIClient(f"{server.url}/v1", timeout=0.2, max_retries=1, backoff=0).chat(PAYLOAD).content
            == "late but fine"
        )
        assert len(server.requests) == 2
    with scripted(HOLD) as server:
        error = failure(OpenAIClient(f"{server.url}/v1", timeout=0.2, max_retries=0))
    assert error.status is None and len(server.requests) == 1
    assert str(error) == f"{server.url}/v1/chat/completions did not answer within 0.2 s (ReadTimeout)"


def test_should_stop_ends_the_retries_with_the_last_failure():
    with scripted((503, {"error": {"message": "busy"}})) as server:
        client = OpenAIClient(f"{server.url}/v1", max_retries=5, backoff=0)
        error = failure(client, should_stop=lambda: True)
        assert len(server.requests) == 1 and error.status == 503
        error = failure(client, should_stop=lambda: len(server.requests) >= 3)
        assert len(server.requests) == 3 and error.status == 503


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "/v1/chat/completions", "/v1/chat/completions/"])
def test_the_base_url_or_the_full_url(suffix):
    with scripted("ok") as server, OpenAIClient(server.url + suffix) as client:
        assert client.endpoint == f"{server.url}/v1/chat/completions"
        assert client.chat(PAYLOAD).content == "ok"
    assert server.paths == ["/v1/chat/completions"]
    assert chat_endpoint("https://api.openai.com/v1") == "https://api.openai.com/v1/chat/completions"


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.3.4.5/v1", True),
        ("http://localhost:8000/v1", True),
        ("http://[::1]:8000/v1", True),
        ("https://api.openai.com/v1", False),
        ("http://10.0.0.7:8000/v1", False),
        ("http://[2001:db8::1]/v1", False),
        ("not a url", False),
    ],
)
def test_loopback_detection(url, loopback):
    assert is_loopback(url) is loopback


def test_loopback_host_detection():
    assert is_loopback_host("localhost") and is_loopback_host("127.0.0.1") and is_loopback_host("::1")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("gpu-host") and not is_loopback_host("")


def _proxy_env(monkeypatch, proxy: str) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "all_proxy", "no_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", proxy)


def test_loopback_hosts_bypass_the_proxy_settings(monkeypatch):
    _proxy_env(monkeypatch, closed_port_url())  # a proxy that is down: using it would fail
    with scripted("direct") as server:
        assert OpenAIClient(f"{server.url}/v1", max_retries=0).chat(PAYLOAD).content == "direct"
    assert server.paths == ["/v1/chat/completions"]


def test_other_hosts_go_through_the_proxy_settings(monkeypatch):
    with scripted("proxied") as proxy:
        _proxy_env(monkeypatch, proxy.url)
        assert OpenAIClient("http://upstream.invalid/v1", max_retries=0).chat(PAYLOAD).content == "proxied"
    assert proxy.paths == ["http://upstream.invalid/v1/chat/completions"]  # the absolute form a proxy gets


@pytest.mark.parametrize(
    "options",
    [{"max_retries": -1}, {"timeout": 0}, {"backoff": -0.5}, {"max_connections": 0}],
)
def test_invalid_options(options):
    with pytest.raises(ConfigError, match="need max_connections >= 1"):
        OpenAIClient("http://127.0.0.1:1/v1", **options)


@pytest.mark.parametrize("url", ["ftp://example.org/v1", "127.0.0.1:8000/v1", "http:///v1"])
def test_invalid_urls(url):
    with pytest.raises(ConfigError, match="is not an http"):
        OpenAIClient(url)
