"""``smoothguard serve``: an OpenAI-compatible server for a local model, or a guard proxy in front of one."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from smoothguard.cli.options import add_guard_options, add_model_options, guard_config, model_options
from smoothguard.errors import ConfigError

_DESCRIPTION = """\
Serve POST /v1/chat/completions, GET /v1/models and GET /health.
Local model: --model HUB_ID|FOLDER|testbed. Guard proxy: --upstream URL --upstream-model NAME (or
--model openai:URL#NAME): each request's noisy copies (pixel space) go to the upstream endpoint.
The guard options are every request's defaults; a request's "smoothguard" object may override
sigma, num_copies and seed within --max-sigma / --max-num-copies. Each request draws fresh noise
(a seed from the OS, returned in the answer) unless --seed N fixes it for every request. A local
model answers concurrent requests in batches (--batch-window-ms, --max-batch-queries); each answer
is the one the request would get alone."""


def register(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="OpenAI-compatible server: a local model, or a guard proxy in front of an OpenAI-compatible endpoint",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = serve.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="hub id, local model folder, testbed, or openai:URL#NAME")
    source.add_argument("--upstream", metavar="URL", help="guard proxy: upstream base URL, e.g. http://gpu:8000/v1")
    _add_upstream_options(serve)
    add_model_options(serve, local_only=True)
    add_guard_options(
        serve,
        unset={"seed": "fix the noise seed of every request (default: a fresh seed from the OS per request)"},
        defense=True,
    )
    server = serve.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (loopback only)")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--served-model-name", help="model id clients use (default: --model or --upstream-model)")
    server.add_argument("--api-key-env", metavar="VAR", help="require the key held in this environment variable")
    server.add_argument("--max-new-tokens", type=int, default=128, help="when a request sets no max_tokens (128)")
    server.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens allowed (1024)")
    server.add_argument("--max-num-copies", type=int, default=32, help="largest num_copies override (32)")
    server.add_argument("--max-sigma", type=float, default=1.0, help="largest sigma override (1.0)")
    server.add_argument("--max-body-bytes", type=int, default=20 * 2**20, help="413 above this (20 MiB)")
    server.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="413 above this (4096x4096)")
    server.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=2048,
        help="413 for longer prompts: tokens of the model's tokenizer, UTF-8 bytes for a proxy (2048)",
    )
    server.add_argument(
        "--request-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="longest a request may hold a local model (generation stops, the answer says so); "
        "a proxy's --upstream-timeout is at most this (120)",
    )
    server.add_argument(
        "--batch-window-ms",
        type=float,
        default=5.0,
        metavar="MS",
        help="local model: concurrent requests with the same settings share a batch, which closes when full or "
        "MS milliseconds after the last request joined it (at most --max-batch-queries windows) (5)",
    )
    server.add_argument(
        "--max-batch-queries",
        type=int,
        default=8,
        metavar="N",
        help="local model: at most N requests per batch; 1 answers one request at a time (8)",
    )
    server.add_argument(
        "--allow-url-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="fetch http(s) image URLs under PREFIX, e.g. https://images.example.org/img/ (same scheme, host and "
        "port, PREFIX's path segments first, after normalising the URL; repeatable; default: none, only data: URIs)",
    )
    server.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    serve.set_defaults(precheck=_check, run=_run_serve)


def _add_upstream_options(serve: argparse.ArgumentParser) -> None:
    upstream = serve.add_argument_group("guard proxy")
    upstream.add_argument("--upstream-model", metavar="NAME", help="the model name the upstream serves")
    upstream.add_argument("--upstream-api-key-env", metavar="VAR", help="send the key held in this variable")
    upstream.add_argument("--upstream-timeout", type=float, default=120.0, help="seconds per request (120)")
    upstream.add_argument("--upstream-concurrency", type=int, default=8, help="most requests in flight (8)")
    upstream.add_argument("--upstream-retries", type=int, default=2, help="retries on 429/5xx/connection errors (2)")
    upstream.add_argument("--upstream-backoff", type=float, default=0.5, help="first retry delay, doubling (0.5 s)")


def _check(args: argparse.Namespace) -> None:
    from smoothguard.server.settings import ServerSettings

    fixed_seed = args.seed is not None  # unless --seed is given, every request draws its own
    args.guard = guard_config(args)
    args.source, args.remote_options, served_name = _model_source(args)
    args.settings = ServerSettings(
        model_name=served_name,
        api_key=_key_from_env(args.api_key_env, "--api-key-env"),
        max_body_bytes=args.max_body_bytes,
        max_image_pixels=args.max_image_pixels,
        max_num_copies=args.max_num_copies if args.defense else 0,
        max_sigma=args.max_sigma,
        max_new_tokens=args.max_tokens_limit,
        default_max_new_tokens=args.max_new_tokens,
        allow_url_prefixes=tuple(args.allow_url_prefix),
        max_prompt_tokens=args.max_prompt_tokens,
        request_timeout=args.request_timeout,
        fixed_seed=fixed_seed,
        batch_window_ms=args.batch_window_ms,
        max_batch_queries=args.max_batch_queries,
    )
    if args.remote_options:
        # The request's time budget bounds every upstream request (connect, read, write).
        args.remote_options["timeout"] = min(args.remote_options["timeout"], args.settings.request_timeout)


def _run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from smoothguard import SmoothGuard
    from smoothguard.models import load_model
    from smoothguard.openai_client import is_loopback_host
    from smoothguard.server.app import create_app

    model = load_model(args.source, **model_options(args), **args.remote_options)
    app = create_app(SmoothGuard(model, args.guard), args.settings)
    if not args.settings.api_key and not is_loopback_host(args.host):
        print(f"smoothguard: warning: serving on {args.host} without --api-key-env", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _model_source(args: argparse.Namespace) -> tuple[str, dict[str, Any], str | None]:
    """The ``load_model`` source, the ``RemoteAdapter`` options of a remote one, and the served model name
    (default: the upstream's model name for a proxy, the model's own name otherwise)."""
    from smoothguard.models import REMOTE_PREFIX

    if args.upstream is None and args.upstream_model is not None:
        raise ConfigError("--upstream-model goes with --upstream URL")
    if args.upstream is not None:
        if not args.upstream_model:
            raise ConfigError("--upstream needs --upstream-model NAME (the model name the upstream serves)")
        source = f"{REMOTE_PREFIX}{args.upstream}#{args.upstream_model}"
    else:
        source = args.model
    if not source.startswith(REMOTE_PREFIX):
        return source, {}, args.served_model_name
    options = {
        "api_key": _key_from_env(args.upstream_api_key_env, "--upstream-api-key-env"),
        "timeout": args.upstream_timeout,
        "max_concurrency": args.upstream_concurrency,
        "max_retries": args.upstream_retries,
        "backoff": args.upstream_backoff,
    }
    return source, options, args.served_model_name or source.partition("#")[2].strip()


def _key_from_env(variable: str | None, option: str) -> str | None:
    if variable is None:
        return None
    key = os.environ.get(variable, "")
    if not key.strip():
        raise ConfigError(f"{option} {variable}: the environment variable is not set or empty")
    return key
