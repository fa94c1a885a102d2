"""Load test of ``smoothguard serve`` on loopback: a bounded number of chat completions with images,
sent by ``--concurrency`` client threads; prints requests/s, p50/p95/max latency and the error count.

    python benchmarks/bench_server_load.py                      # tiny random LLaVA, SmoothGuard 10 + 1
    python benchmarks/bench_server_load.py --mode undefended    # the same server with --no-defense
    python benchmarks/bench_server_load.py --mode proxy         # guard proxy -> --no-defense server
    python benchmarks/bench_server_load.py --model FOLDER --requests 50 --concurrency 4

The servers run as ``smoothguard serve`` subprocesses on free ports of 127.0.0.1 (so that the client
threads do not share the servers' interpreter); nothing leaves the machine. Each request carries
one of 8 random 64x64 PNGs and a distinct prompt; ``--warmup`` requests are sent first, untimed.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx
import numpy as np
import torch
from PIL import Image


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(stack: ExitStack, *args: str) -> str:
    """``smoothguard serve ARGS`` on a free loopback port, stopped when ``stack`` closes; returns its URL."""
    port = free_port()
    command = [sys.executable, "-m", "smoothguard", "serve", "--port", str(port), "--log-level", "warning", *args]
    process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    stack.callback(process.wait, 30)
    stack.callback(process.terminate)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with status {process.returncode}: {' '.join(command)}")
        try:
            httpx.get(f"{url}/health", timeout=1).raise_for_status()
            return url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"server on {url} did not come up")


def images(count: int = 8, size: int = 64) -> list[str]:
    rng = np.random.default_rng(0)
    uris = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(buffer, format="PNG")
        uris.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    return uris


def run_load(url: str, model: str, requests: int, concurrency: int, max_tokens: int, warmup: int) -> dict:
    pictures = images()
    client = httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=concurrency))

    def one(i: int) -> tuple[float, bool]:
        content = [
            {"type": "image_url", "image_url": {"url": pictures[i % len(pictures)]}},
            {"type": "text", "text": f"Request {i}: what is in the image?"},
        ]
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
        started = time.perf_counter()
        try:
            ok = client.post("/v1/chat/completions", json=body).status_code == 200
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - started, ok

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(warmup)))
        started = time.perf_counter()
        outcomes = list(pool.map(one, range(requests)))
        elapsed = time.perf_counter() - started
    latencies = sorted(seconds for seconds, _ in outcomes)
    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(requests / elapsed, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1),
        "max_ms": round(1000 * latencies[-1], 1),
        "errors": sum(not ok for _, ok in outcomes),
    }


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: a tiny random LLaVA built on the spot)")
    parser.add_argument("--mode", choices=("defended", "undefended", "proxy"), default="defended")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--num-copies", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=8)
    args = parser.parse_args()
    guard = ["--num-copies", str(args.num_copies), "--sigma", "0.1", "--device", "cpu"]
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        if args.model is None:
            from smoothguard.models.tiny import save_tiny_llava

            args.model = str(save_tiny_llava(folder))
        name = ["--served-model-name", "bench"]
        if args.mode == "defended":
            url = start_server(stack, "--model", args.model, *name, *guard)
        elif args.mode == "undefended":
            url = start_server(stack, "--model", args.model, *name, "--no-defense", "--device", "cpu")
        else:
            upstream = start_server(stack, "--model", args.model, *name, "--no-defense", "--device", "cpu")
            remote = ["--upstream", f"{upstream}/v1", "--upstream-model", "bench", "--sigma", "0.05"]
            url = start_server(stack, *remote, "--num-copies", str(args.num_copies))
        figures = run_load(url, "bench", args.requests, args.concurrency, args.max_tokens, args.warmup)
    figures.update(mode=args.mode, num_copies=0 if args.mode == "undefended" else args.num_copies, machine=machine())
    print(json.dumps(figures))
    print(
        f"[{args.mode}] {figures['requests']} requests, concurrency {figures['concurrency']}: "
        f"{figures['requests_per_s']} req/s, p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms, "
        f"errors {figures['errors']}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
