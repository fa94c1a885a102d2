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

from smoothguard.cli import EXIT_USER_ERROR, main
from smoothguard.cli.main import build_parser
from smoothguard.server import BackgroundServer
from support.server import question

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
        (["--model", "m", "--max-prompt-tokens", "0"], "--max-prompt-tokens"),
        (["--model", "m", "--request-timeout", "0"], "--request-timeout"),
        (["--model", "m", "--request-timeout", "nan"], "request_timeout"),
        (["--model", "m", "--allow-url-prefix", "http://h/a/../b/"], "URL prefix"),
        (["--model", "m", "--allow-url-prefix", "http://user@h/img/"], "URL prefix"),
        (["--model", "m", "--max-batch-queries", "0"], "--max-batch-queries"),
        (["--model", "m", "--batch-window-ms", "-1"], "--batch-window-ms"),
    ],
)
def test_user_errors_are_one_line(capsys, args, message):
    assert main(["serve", *args]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("smoothguard: error:") and message in err and len(err.strip().splitlines()) == 1


def checked(*argv: str):
    """The parsed and checked options of ``smoothguard serve ARGV`` (no model loads)."""
    args = build_parser().parse_args(["serve", *argv])
    args.precheck(args)
    return args


def test_seed_is_fixed_only_when_given():
    assert checked("--model", "m").settings.fixed_seed is False
    fixed = checked("--model", "m", "--seed", "5")
    assert fixed.settings.fixed_seed is True and fixed.guard.seed == 5
    assert checked("--model", "m", "--seed", "0").settings.fixed_seed is True  # the old default, asked for
    defaults = checked("--model", "m").settings
    assert (defaults.max_prompt_tokens, defaults.request_timeout) == (2048, 120.0)


def test_batching_options_reach_the_settings():
    defaults = checked("--model", "m").settings
    assert (defaults.batch_window_ms, defaults.max_batch_queries) == (5.0, 8)
    given = checked("--model", "m", "--batch-window-ms", "2.5", "--max-batch-queries", "1").settings
    assert (given.batch_window_ms, given.max_batch_queries) == (2.5, 1)


def test_request_timeout_bounds_the_upstream_timeout():
    proxy = ("--upstream", "http://127.0.0.1:9/v1", "--upstream-model", "m")
    assert checked(*proxy).remote_options["timeout"] == 120.0
    assert checked(*proxy, "--request-timeout", "5").remote_options["timeout"] == 5.0
    assert checked(*proxy, "--upstream-timeout", "3", "--request-timeout", "5").remote_options["timeout"] == 3.0


@pytest.mark.parametrize("seed", [None, "5"])
def test_served_seeds_from_the_command_line(tiny_llava_dir, monkeypatch, seed):
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(app))
    options = ["--num-copies", "2", "--sigma", "0.5", "--max-new-tokens", "3"]
    assert main(["serve", "--model", str(tiny_llava_dir), *options, *(["--seed", seed] if seed else [])]) == 0
    with BackgroundServer(served[0]) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        extra = {"smoothguard": {"return_candidates": True}}
        answers = [
            client.chat.completions.create(model=str(tiny_llava_dir), messages=question("Hi", 0), extra_body=extra)
            for _ in range(2)
        ]
    first, second = (answer.model_extra["smoothguard"] for answer in answers)
    if seed is None:
        assert first["seed"] != second["seed"] and first["seed_source"] == "random"
    else:
        assert first["seed"] == second["seed"] == 5 and first["seed_source"] == "server"
        assert first["candidates"] == second["candidates"]
