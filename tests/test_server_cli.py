"""``smoothguard serve`` from the command line: both modes as real processes, and one-line user errors."""

import os
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
import uvicorn

from server_support import question
from smoothguard.cli import EXIT_USER_ERROR, main
from smoothguard.server import BackgroundServer

KEYS = {"SG_TEST_PROXY_KEY": "sk-proxy-secret-1", "SG_TEST_UPSTREAM_KEY": "sk-upstream-secret-2"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "smoothguard", "serve", "--port", str(port), "--log-level", "info", *args]
    process = subprocess.Popen(
        command, env={**os.environ, **KEYS}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return process, f"http://127.0.0.1:{port}"


def wait_healthy(process: subprocess.Popen, url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not come up")


def test_local_server_and_proxy_run_from_the_cli(tiny_llava_dir, monkeypatch):
    # The local server as a real process; the proxy in front of it through the same command in-process
    # (its uvicorn.run swapped for a background server, to keep the test to one process start).
    upstream_options = ["--no-defense", "--served-model-name", "tiny", "--api-key-env", "SG_TEST_UPSTREAM_KEY"]
    upstream, upstream_url = serve("--model", str(tiny_llava_dir), *upstream_options)
    try:
        for name, value in KEYS.items():
            monkeypatch.setenv(name, value)
        served = []
        monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append((app, options)))
        wait_healthy(upstream, upstream_url)
        proxy_options = (
            "--upstream-model tiny --upstream-api-key-env SG_TEST_UPSTREAM_KEY --api-key-env SG_TEST_PROXY_KEY"
        )
        guard_options = "--num-copies 2 --sigma 0.05"
        command = ["serve", "--upstream", f"{upstream_url}/v1", *proxy_options.split(), *guard_options.split()]
        assert main(command) == 0
        ((app, options),) = served
        assert options["host"] == "127.0.0.1" and options["port"] == 8000
        with BackgroundServer(app) as proxy:
            client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=KEYS["SG_TEST_PROXY_KEY"], max_retries=0)
            completion = client.chat.completions.create(model="tiny", messages=question("Hi", seed=0), max_tokens=4)
        evidence = completion.model_extra["smoothguard"]
        assert evidence["num_candidates"] == 3 and evidence["noise_space"] == "pixel"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{upstream_url}/v1", api_key="sk-guess", max_retries=0).models.list()
    finally:
        upstream.terminate()
        logs = upstream.communicate(timeout=30)[0]
    assert "POST /v1/chat/completions" in logs  # the access log is on...
    assert not any(key in logs for key in KEYS.values())  # ...and never shows a key


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--upstream", "http://127.0.0.1:9/v1"], "--upstream-model"),
        (["--model", "m", "--upstream-model", "x"], "goes with --upstream"),
        (["--model", "openai:127.0.0.1#m"], "openai:http"),
        (["--model", "m", "--api-key-env", "SG_TEST_UNSET_VARIABLE"], "SG_TEST_UNSET_VARIABLE"),
        (["--model", "m", "--allow-url-prefix", "http://host"], "URL prefix"),
        (["--model", "m", "--max-new-tokens", "2000"], "over the limit"),
    ],
)
def test_user_errors_are_one_line(capsys, args, message):
    assert main(["serve", *args]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("smoothguard: error:") and message in err and len(err.strip().splitlines()) == 1
