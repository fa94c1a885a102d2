"""Load test of ``smoothguard serve`` on loopback: a bounded number of chat completions with images,
sent by ``--concurrency`` client threads; prints requests/s, p50/p95/max latency, the error count and
the mean number of requests per batch (``smoothguard.batch_queries``).

    python benchmarks/bench_server_load.py                      # tiny random LLaVA, SmoothGuard 10 + 1
    python benchmarks/bench_server_load.py --compare            # the same, one at a time vs batched, side by side
    python benchmarks/bench_server_load.py --max-batch-queries 1   # one request at a time (no batching)
    python benchmarks/bench_server_load.py --mode undefended    # the same server with --no-defense
    python benchmarks/bench_server_load.py --mode proxy         # guard proxy -> --no-defense server
    python benchmarks/bench_server_load.py --model FOLDER --requests 50 --concurrency 4

The servers run as ``smoothguard serve`` subprocesses on free ports of 127.0.0.1 (so that the client
threads do not share the servers' interpreter), with ``OMP_NUM_THREADS`` set to ``--threads`` (1);
nothing leaves the machine. Each request carries one of 8 random 64x64 PNGs and a distinct prompt;
``--warmup`` requests are sent first, untimed. ``--compare`` runs a local mode twice per round, with
``--max-batch-queries 1`` (requests answered one at a time, as before batching) and with the batching
options given (default: the server's, 8 requests, 5 ms), ``--rounds`` times alternating, and prints
both, pooled over the rounds; the machine's load average is printed beside them.
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
    """Send ``requests`` (after ``warmup``) from ``concurrency`` threads; the raw outcomes and the seconds."""
    pictures = images()
    client = httpx.Client(base_url=url, timeout=300, limits=httpx.Limits(max_connections=concurrency))

    def one(i: int) -> tuple[float, bool, int | None]:
        content = [
            {"type": "image_url", "image_url": {"url": pictures[i % len(pictures)]}},
            {"type": "text", "text": f"Request {i}: what is in the image?"},
        ]
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
        started = time.perf_counter()
        try:
            response = client.post("/v1/chat/completions", json=body)
            ok = response.status_code == 200
            batch = response.json()["smoothguard"].get("batch_queries") if ok else None
        except httpx.HTTPError:
            ok, batch = False, None
        return time.perf_counter() - started, ok, batch

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(warmup)))
        started = time.perf_counter()
        outcomes = list(pool.map(one, range(requests)))
        elapsed = time.perf_counter() - started
    return {"outcomes": outcomes, "seconds": elapsed, "concurrency": concurrency}


def summarize(runs: list[dict]) -> dict:
    """Figures pooled over ``runs`` of ``run_load``: requests/s over their total time, latency percentiles
    over all their requests."""
    outcomes = [outcome for run in runs for outcome in run["outcomes"]]
    elapsed = sum(run["seconds"] for run in runs)
    latencies = sorted(seconds for seconds, _, _ in outcomes)
    batches = [batch for _, _, batch in outcomes if batch is not None]
    return {
        "requests": len(outcomes),
        "concurrency": runs[0]["concurrency"],
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(outcomes) / elapsed, 2),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1),
        "max_ms": round(1000 * latencies[-1], 1),
        "errors": sum(not ok for _, ok, _ in outcomes),
        "mean_batch_queries": round(statistics.mean(batches), 2) if batches else None,
    }


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, CPU"


def load_average() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def serve_arm(stack: ExitStack, args: argparse.Namespace, batching: list[str]) -> str:
    """Start the server(s) of ``args.mode`` with ``batching`` options; the URL to load."""
    name = ["--served-model-name", "bench"]
    guard = ["--num-copies", str(args.num_copies), "--sigma", "0.1", "--device", "cpu"]
    if args.mode == "defended":
        return start_server(stack, "--model", args.model, *name, *guard, *batching)
    if args.mode == "undefended":
        return start_server(stack, "--model", args.model, *name, "--no-defense", "--device", "cpu", *batching)
    upstream = start_server(stack, "--model", args.model, *name, "--no-defense", "--device", "cpu", *batching)
    remote = ["--upstream", f"{upstream}/v1", "--upstream-model", "bench", "--sigma", "0.05"]
    return start_server(stack, *remote, "--num-copies", str(args.num_copies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: a tiny random LLaVA built on the spot)")
    parser.add_argument("--mode", choices=("defended", "undefended", "proxy"), default="defended")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--num-copies", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the servers (1)")
    parser.add_argument("--max-batch-queries", type=int, help="the local server's --max-batch-queries")
    parser.add_argument("--batch-window-ms", type=float, help="the local server's --batch-window-ms")
    parser.add_argument("--compare", action="store_true", help="--max-batch-queries 1 vs the batching options")
    parser.add_argument("--rounds", type=int, default=1, help="with --compare: alternating rounds (1)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the servers inherit it
    batching = [
        *([] if args.max_batch_queries is None else ["--max-batch-queries", str(args.max_batch_queries)]),
        *([] if args.batch_window_ms is None else ["--batch-window-ms", str(args.batch_window_ms)]),
    ]
    arms = {"one at a time": ["--max-batch-queries", "1"], "batched": batching} if args.compare else {"": batching}
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    load = [load_average()]
    with tempfile.TemporaryDirectory() as folder:
        if args.model is None:
            from smoothguard.models.tiny import save_tiny_llava

            args.model = str(save_tiny_llava(folder))
        for _ in range(args.rounds if args.compare else 1):
            for arm, options in arms.items():
                with ExitStack() as stack:
                    url = serve_arm(stack, args, options)
                    runs[arm].append(
                        run_load(url, "bench", args.requests, args.concurrency, args.max_tokens, args.warmup)
                    )
                load.append(load_average())
    common = {
        "mode": args.mode,
        "num_copies": 0 if args.mode == "undefended" else args.num_copies,
        "threads": args.threads,
        "load_average_1_5_15": load,
        "machine": machine(),
    }
    for arm, options in arms.items():
        figures = {**summarize(runs[arm]), "server_options": " ".join(options) or "defaults", **common}
        if args.compare:
            figures["arm"] = arm
        print(json.dumps(figures))
        print(
            f"[{args.mode}{', ' + arm if arm else ''}] {figures['requests']} requests, concurrency "
            f"{figures['concurrency']}, {args.threads} thread(s): {figures['requests_per_s']} req/s, "
            f"p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms, errors {figures['errors']}, "
            f"mean batch {figures['mean_batch_queries']}",
            file=sys.stderr,
        )
    if args.compare:
        single, batched = (summarize(runs[arm]) for arm in arms)
        print(
            f"batched / one at a time: {batched['requests_per_s'] / single['requests_per_s']:.2f}x requests/s, "
            f"p95 {batched['p95_ms']} vs {single['p95_ms']} ms; load average during the runs {', '.join(load)}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
