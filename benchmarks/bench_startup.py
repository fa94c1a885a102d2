"""Start-up cost of the ``smoothguard`` command and package, as whole processes, beside ``import torch``.

Each arm is a fresh ``python`` process; the arms run interleaved (one round = every arm once, in a new
random order), and the script prints each arm's median wall time, its difference from
``python -c "import torch"`` and from bare Python. Goals (issue 10): every ``--help`` and a user mistake
that needs no model (a missing image) under 0.5 s and 1 s; ``import smoothguard`` within 0.5 s of
``import torch``.

    python benchmarks/bench_startup.py [--repeats 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

PYTHON = sys.executable
SUBCOMMANDS = ("generate", "attack", "testbed", "demo", "eval", "sweep", "score", "certify", "serve")


def arms() -> dict[str, tuple[list[str], int]]:
    """Arm name -> (argv, the exit status it must end with)."""
    command = [PYTHON, "-m", "smoothguard"]
    found = {
        "python (bare)": [PYTHON, "-c", "pass"],
        "import torch": [PYTHON, "-c", "import torch"],
        "import smoothguard": [PYTHON, "-c", "import smoothguard"],
        "from smoothguard import SmoothGuard, load_model": [
            PYTHON,
            "-c",
            "from smoothguard import SmoothGuard, load_model",
        ],
        "smoothguard --help": [*command, "--help"],
    }
    found.update({f"smoothguard {name} --help": [*command, name, "--help"] for name in SUBCOMMANDS})
    arms = {name: (argv, 0) for name, argv in found.items()}
    generate = [*command, "generate", "--model", "testbed", "--prompt", "hi", "--image"]
    arms["smoothguard generate: missing image (exit 2)"] = ([*generate, "no-such-image.png"], 2)
    arms["smoothguard generate: bad sigma (exit 2)"] = ([*generate, "x.png", "--sigma", "-1"], 2)
    return arms


def run_once(argv: list[str], expected: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    if done.returncode != expected:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0, help="seed of the arms' order per round")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    commands = arms()
    times: dict[str, list[float]] = {name: [] for name in commands}
    order = list(commands)
    rng = random.Random(args.seed)
    for _ in range(args.repeats):
        rng.shuffle(order)
        for name in order:
            times[name].append(run_once(*commands[name]))
    medians = {name: statistics.median(values) for name, values in times.items()}
    torch_s, bare_s = medians["import torch"], medians["python (bare)"]
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={threads}"
    print(f"machine: {machine}, Python {platform.python_version()}")
    print(f"median wall time of {args.repeats} interleaved runs per arm (fresh process each)")
    print(f"{'arm':54} {'median s':>9} {'- torch s':>10} {'- bare s':>9}")
    for name, median in medians.items():
        print(f"{name:54} {median:9.3f} {median - torch_s:+10.3f} {median - bare_s:+9.3f}")
    if args.json:
        print(json.dumps({"medians_s": medians, "repeats": args.repeats, "omp_num_threads": threads}, indent=2))


if __name__ == "__main__":
    main()
