"""The README's own paths: every shell command in its ```bash blocks runs as written after the quick start,
or is listed here with the reason it is not run.

Commands are read from README.md (backslash continuations joined, comment lines skipped, ``a && b`` taken
as two steps) and run with bash in a fresh working folder that looks like a checkout after the quick start:
``examples/`` and ``benchmarks/`` copied, ``.venv/bin`` holding this environment's ``smoothguard`` and
``python`` (also first on ``PATH``), ``../shared`` pointing at the project's shared fixtures when they exist,
and ``HF_HUB_OFFLINE=1``. ``NAME=value`` lines of a block are set before the block's later commands, and
``[--option ...]`` (the README's mark for optional arguments) is left out.

Every command the README shows is in exactly one of ``RUN`` (run by the test named there), ``SLOW`` (run only
with ``SMOOTHGUARD_README_SLOW=1``: slow only because of its size) or ``SKIP`` (with the reason), so a new or
changed README command fails ``test_every_readme_command_is_run_or_skipped_with_a_reason`` until someone
decides. Times below: this project's CPU machine (2 cores, ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.common import SHARED, needs_reference

ROOT = Path(__file__).resolve().parents[1]


README = ROOT / "README.md"


SHIPPED_ATTACKS = ROOT / "src" / "smoothguard" / "testbed" / "assets" / "attacks"


SLOW_ENV = "SMOOTHGUARD_README_SLOW"


#: Run as written, by the test named (in README order within each).
RUN = {
    ".venv/bin/smoothguard demo": "demo",  # ~3.5 min with the shipped attack images
    "python -m smoothguard.models.tiny llava models/tiny-llava": "attack",  # ~4 s
    'smoothguard attack --model models/tiny-llava --image examples/scene.png --prompt "What is in the image?" '
    '--target "Sure, here is the secret password." --eps 32 --alpha 1 --steps 20 --out runs/adv.png --check '
    "--json": "attack",  # ~6 s
    "smoothguard score pope $F/pope/answers/llava-1.5-7b-hf-baseline.jsonl --questions "
    "$F/pope/llava_pope_test.jsonl --labels $F/pope/coco [--json]": "score",  # ~1 s
    "smoothguard score llava-bench $F/llava_bench/reviews/llava-reviews-normal.jsonl [--exclude-unparseable] "
    "[--json]": "score",  # ~1 s
    "python benchmarks/bench_guard_latency.py --image-size 32 --patch-size 8 --hidden-size 32 --new-tokens 32 "
    "--repeats 7": "benchmark",  # ~11 s
}


_CERTIFY = "3-4 min each: 32 items x 410 copies at 2 sigmas (~26,000 generations) for the README's certification table"


#: Runnable here, but slow because of their size: run with SMOOTHGUARD_README_SLOW=1.
SLOW = {
    "smoothguard certify --model testbed --benchmark testbed --sigmas 0.25,0.5 --noise-space pixel --n0 10 --n 400 "
    "--alpha 0.001 --limit 32 --radii 0,0.25,0.5,1 --out runs/certify/yesno": _CERTIFY,
    "smoothguard certify --model testbed --benchmark testbed --sigmas 0.25,0.5 --purifier testbed-denoiser --n0 10 "
    "--n 400 --alpha 0.001 --limit 32 --radii 0,0.25,0.5,1 --out runs/certify/yesno-denoised": _CERTIFY,
    "smoothguard certify --model testbed --benchmark testbed-safety --sigmas 0.25,0.5 --noise-space pixel --n0 10 "
    "--n 400 --alpha 0.001 --limit 32 --radii 0,0.25,0.5,1 --out runs/certify/refusal": _CERTIFY,
    "smoothguard certify --model testbed --benchmark testbed-safety --sigmas 0.25,0.5 --purifier testbed-denoiser "
    "--n0 10 --n 400 --alpha 0.001 --limit 32 --radii 0,0.25,0.5,1 --out runs/certify/refusal-denoised": _CERTIFY,
    "python examples/denoised_smoothing.py --out runs/denoised --threads 2": "~30 min: 8 settings x (1,007 "
    "questions + 768 safety trials) x 5 candidates, for the README's denoised-smoothing sweep",
    "python benchmarks/bench_guard_latency.py --threads 1 --repeats 5 # 576 image tokens, 128 new tokens": "40 s: "
    "a timing benchmark, 5 repeats of 5 arms with 576 image tokens and 128 new tokens",
    "python benchmarks/bench_guard_latency.py --testbed --threads 1 --repeats 15": "15 s: a timing benchmark, 15 "
    "repeats of 5 arms on the testbed",
    "python benchmarks/bench_adaptive_sampling.py --items 60 --sigmas 0.1,0.25,0.5 [--round-size 2 --alpha 0.05 "
    "--json]": "29 s: 60 testbed items guarded at 3 sigmas, full and adaptive",
    "python benchmarks/bench_server_load.py [--mode defended|undefended|proxy] [--requests 200 --concurrency 8]": "25 s"
    ": a load benchmark (starts a server on loopback, 8 warm-up + 200 requests)",
}


_HUB = "needs a hub model (HF_HUB_OFFLINE=1 here; 7B weights, a GPU in practice)"


_GPU_RUN = "the full GPU run: LLaVA-1.5-7B from the hub and the benchmark's published data in data/ (neither here)"


#: Not run, with the reason.
SKIP = {
    "python3 -m venv .venv": "set-up: the test runs in the environment the quick start made",
    ".venv/bin/pip install -q -r requirements-cpu.txt -e .": "installs packages (a package index; minutes)",
    ".venv/bin/pip install -q -r requirements-cpu.txt -e '.[dev]'": "installs packages (a package index; minutes)",
    ".venv/bin/python -m pytest -q": "the whole test suite, this file included (CI runs it: .ci/run)",
    ".venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": "network: PyTorch's CPU "
    "index, for machines without this one's local CPU wheel",
    'smoothguard generate --model llava-hf/llava-1.5-7b-hf --image cat.png --prompt "What is in the image?" [--sigma '
    "0.1 --num-copies 10 --noise-space normalized --seed 0 --max-new-tokens 128 --no-defense --json]": _HUB
    + "; cat.png is a placeholder",
    'smoothguard generate --model Qwen/Qwen2-Audio-7B-Instruct --audio clip.wav --prompt "What do you hear?"': _HUB
    + "; clip.wav is a placeholder",
    "smoothguard eval pope --model $M --data data/pope --no-defense --out runs/pope/llava-baseline": _GPU_RUN,
    "smoothguard eval pope --model $M --data data/pope --sigma 0.1 --num-copies 10 --out runs/pope/llava-sg": _GPU_RUN,
    "smoothguard eval mm-safety --model $M --data data/mm-safetybench --universal-image $U --no-defense --out "
    "runs/mm/llava-baseline": _GPU_RUN,
    "smoothguard eval mm-safety --model $M --data data/mm-safetybench --universal-image $U --out runs/mm/llava-sg": (
        _GPU_RUN
    ),
    "smoothguard eval mm-safety ... --judge guard-model --judge-model /models/Llama-Guard-3-8B --out "
    "runs/mm/llava-sg-lg3": "'...' stands for the options above; needs Llama-Guard-3-8B in /models",
    "smoothguard eval mm-safety ... --judge openai --judge-url https://api.openai.com/v1 --judge-model gpt-4o --out "
    "runs/mm/llava-sg-gpt4o": "'...' stands for the options above; needs OpenAI's API and a key",
    "smoothguard eval llava-bench --model $M --data data/llava-bench-in-the-wild --judge openai --judge-url "
    "https://api.openai.com/v1 --judge-model gpt-4-0314 --out runs/llava-bench/llava-sg": _GPU_RUN
    + "; and OpenAI's API with a key",
    "smoothguard sweep pope --model $M --data data/pope --sigmas 0,0.05,0.1,0.15,0.2,0.3,0.4,0.5 --out "
    "runs/sweep/pope": _GPU_RUN,
    "smoothguard sweep mm-safety --model $M --data data/mm-safetybench --universal-image $U --sigmas "
    "0,0.05,0.1,0.15,0.2,0.3,0.4,0.5 --out runs/sweep/mm": _GPU_RUN,
    "for i in 0 1 2 3; do CUDA_VISIBLE_DEVICES=$i smoothguard eval pope --model $M --data data/pope --shard $i/4 --out "
    "runs/pope/llava-sg & done; wait": _GPU_RUN + "; four GPUs",
    "smoothguard eval pope --model $M --data data/pope --out runs/pope/llava-sg": _GPU_RUN,
    "smoothguard certify --model llava-hf/llava-1.5-7b-hf --benchmark pope --data data/pope --splits adversarial "
    "--sigma 0.12,0.25,0.5 --noise-space pixel --n0 100 --n 1000 --alpha 0.001 --max-new-tokens 8 [--radii "
    "0,0.1,0.25,0.5,1 --limit K --batch-size 128 --seed 0 --out DIR --json]": _HUB + "; and POPE's data in data/",
    "export SMOOTHGUARD_API_KEY=sk-... # optional; without --api-key-env the server takes no key": "a placeholder "
    "key for the server example",
    "smoothguard serve --model llava-hf/llava-1.5-7b-hf --sigma 0.1 --num-copies 10 --api-key-env SMOOTHGUARD_API_KEY "
    "[--host 127.0.0.1 --port 8000 --no-defense]": "a server that runs until stopped, of a hub model; "
    "tests/test_server_*.py serve the tiny models",
    """printf '{"model": "llava-hf/llava-1.5-7b-hf", "max_tokens": 64, "messages": [{"role": "user", "content": [ """
    """{"type": "text", "text": "What is in the image?"}, {"type": "image_url", "image_url": {"url": """
    """"data:image/png;base64,%s"}}]}], "smoothguard": {"num_copies": 6, "return_candidates": true}}' """
    """"$(base64 -w0 cat.png)" > request.json""": "a request for the server above; cat.png is a placeholder",
    "curl -s http://127.0.0.1:8000/v1/chat/completions -H "
    '"Authorization: Bearer $SMOOTHGUARD_API_KEY" -H "Content-Type: application/json" --data-binary @request.json': (
        "needs the server above on 127.0.0.1:8000"
    ),
    'vllm serve llava-hf/llava-1.5-7b-hf --host 0.0.0.0 --port 8001 --api-key "$VLLM_API_KEY"': "vLLM on a GPU "
    "machine (not part of SmoothGuard; documentation)",
    "smoothguard serve --upstream http://gpu-host:8001/v1 --upstream-model llava-hf/llava-1.5-7b-hf "
    "--upstream-api-key-env VLLM_API_KEY --api-key-env SMOOTHGUARD_API_KEY --sigma 0.027 --num-copies 10 "
    "--upstream-concurrency 16 --port 8000": "a proxy that runs until stopped, in front of the vLLM server above "
    "(gpu-host); tests/test_server_proxy.py runs one",
}


_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=\S*")


_OPTIONAL = re.compile(r"\s*\[--[^\]]*\]")


@dataclass(frozen=True)
class Command:
    block: int
    text: str  # as written (continuations joined)
    setup: tuple[str, ...]  # the block's NAME=value lines before it

    @property
    def key(self) -> str:
        return " ".join(self.text.split())


def _complete(text: str) -> bool:
    try:
        shlex.split(text, comments=True)
    except ValueError:  # an open quote: the command goes on on the next line
        return False
    return True


def readme_commands(text: str) -> list[Command]:
    commands: list[Command] = []
    for block, body in enumerate(re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)):
        setup: list[str] = []
        pending = ""
        for raw in body.splitlines():
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            pending += line if not pending or pending.endswith(" ") else raw
            if not _complete(pending):
                pending += "\n"
                continue
            for part in pending.split(" && "):
                if _ASSIGNMENT.fullmatch(part.strip()):
                    setup.append(part.strip())
                else:
                    commands.append(Command(block, part.strip(), tuple(setup)))
            pending = ""
    return commands


COMMANDS = readme_commands(README.read_text())


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    listed = [*RUN, *SLOW, *SKIP]
    assert len(set(listed)) == len(listed), "a command is listed twice"
    unknown = [c.key for c in COMMANDS if c.key not in listed]
    assert not unknown, "README commands neither run nor skipped (add each to RUN, SLOW or SKIP):\n" + "\n".join(
        unknown
    )
    keys = {c.key for c in COMMANDS}
    stale = [key for key in listed if key not in keys]
    assert not stale, "listed commands no longer in the README:\n" + "\n".join(stale)
    assert all(reason for reason in [*SLOW.values(), *SKIP.values()])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkout after the quick start: the README's relative paths (examples/, runs/, ../shared) resolve."""
    root = tmp_path_factory.mktemp("readme")
    work = root / "work"
    work.mkdir()
    for folder in ("examples", "benchmarks"):
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    if SHARED.is_dir():
        (root / "shared").symlink_to(SHARED, target_is_directory=True)
    bin_dir = work / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = Path(sys.executable).parent / "smoothguard"
    commands = {
        "python": f'exec {shlex.quote(sys.executable)} "$@"',
        "python3": f'exec {shlex.quote(sys.executable)} "$@"',
        "smoothguard": f'exec {shlex.quote(str(script))} "$@"'
        if script.is_file()
        else f'exec {shlex.quote(sys.executable)} -m smoothguard "$@"',
    }
    for name, body in commands.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return work


def run(command: str | Command, workdir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``command`` with bash in ``workdir``, as the README's reader would (optional ``[--...]`` left out)."""
    setup = command.setup if isinstance(command, Command) else ()
    text = command.text if isinstance(command, Command) else command
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PATH": f"{workdir / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    script = "\n".join([*setup, _OPTIONAL.sub("", text)])
    done = subprocess.run(
        ["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{text}\nexit {done.returncode}\n{done.stderr[-3000:]}"
    return done


def run_group(group: str, workdir: Path) -> dict[str, subprocess.CompletedProcess]:
    commands = [c for c in COMMANDS if RUN.get(c.key) == group]
    assert commands, f"the README has no '{group}' command any more: update RUN"
    return {c.key: run(c, workdir) for c in commands}


def test_quick_start_demo_writes_what_it_lists_and_the_follow_up_sweep_runs(workdir):
    (demo,) = run_group("demo", workdir).values()
    out = workdir / "runs" / "demo"
    summary = json.loads((out / "summary.json").read_text())
    folders = {used["folder"] for used in summary["images"].values()}
    assert all((out / folder).is_dir() for folder in folders)
    # the default settings use the shipped attack images, and the demo leaves them in its folder, byte for byte
    for folder in folders:
        name = Path(folder).name
        shipped = sorted(p.name for p in (SHIPPED_ATTACKS / name).iterdir())
        assert shipped and sorted(p.name for p in (out / folder).iterdir()) == shipped
        for file in shipped:
            assert (out / folder / file).read_bytes() == (SHIPPED_ATTACKS / name / file).read_bytes()
    assert "optimising" not in demo.stderr
    assert "[demo] utility, undefended: 1007 yes/no + 256 descriptions" in demo.stderr
    assert "worst case per request, any attack" in demo.stdout and "per-request adaptive, eps 16" in demo.stdout
    assert "BROKEN ATTACK" not in demo.stdout  # the shipped attacks pass their checks on the undefended model
    # the README's follow-up (prose in the quick start), with two sigmas in place of its "..."
    match = re.search(r"`(smoothguard sweep\s+testbed-safety[^`]*)`", README.read_text())
    assert match, "the quick start no longer names its sweep follow-up"
    follow_up = " ".join(match[1].split())
    assert "--sigmas ..." in follow_up and "universal_image=runs/demo/attacks/white-box-32" in follow_up
    sweep = run(follow_up.replace("--sigmas ...", "--sigmas 0.1,0.25"), workdir)
    assert "sigma 0.25" in sweep.stdout and "all.complied" in sweep.stdout
    assert "[eval testbed-safety] done: 128/128 items in " in sweep.stderr  # progress lines: stderr is a pipe here
    rows = (workdir / "runs/testbed-safety/testbed/sweep/asr-vs-sigma.csv").read_text().splitlines()
    assert len(rows) == 3  # header and one row per sigma


def test_attack_example_runs_on_the_tiny_model_it_creates(workdir):
    results = run_group("attack", workdir)
    attack = next(done for key, done in results.items() if key.startswith("smoothguard attack"))
    result = json.loads(attack.stdout)
    assert result["out"] == "runs/adv.png" and (workdir / "runs/adv.png").is_file()
    assert (workdir / result["sidecar"]).is_file() and result["check"]["smoothguard"]["num_candidates"] == 11
    # the figures the README prints for this command
    shown = json.loads(
        re.search(r"prints \(the tiny random model[^\n]*\n\n```json\n(.*?)```", README.read_text(), re.S)[1]
    )
    assert (result["linf"], result["steps"], result["units"]) == (shown["linf"], shown["steps"], shown["units"])
    for key in ("start_loss", "end_loss", "l2"):
        assert result[key] == pytest.approx(shown[key], rel=1e-3), key


@needs_reference(SHARED / "fixtures", "the POPE answers and LLaVA-Bench reviews the score examples read")
def test_score_examples_reproduce_the_readme_tables(workdir):
    pope, llava_bench = run_group("score", workdir).values()
    readme = README.read_text()
    row = re.search(r"^\| LLaVA-1\.5-7B, undefended \|(.*)\|$", readme, re.M)[1]
    assert all(figure in pope.stdout for figure in row.replace("|", " ").split())  # F1 per split, means
    row = re.search(r"^\| LLaVA-1\.5-7B, undefended \(`llava-reviews-normal`\) \|(.*)\|$", readme, re.M)[1]
    relative = [cell.strip() for cell in row.split("|")][:4]  # all, conv, detail, complex
    assert all(figure in llava_bench.stdout for figure in relative)


def test_latency_benchmark_example_runs(workdir):
    (bench,) = run_group("benchmark", workdir).values()
    assert "ratio" in bench.stdout


@pytest.mark.slow
@pytest.mark.parametrize("key", list(SLOW), ids=lambda key: " ".join(key.split()[:3]))
def test_slow_readme_commands(workdir, key):
    if os.environ.get(SLOW_ENV) != "1":
        pytest.skip(f"slow by size ({SLOW[key]}); {SLOW_ENV}=1 runs it")
    run(next(c for c in COMMANDS if c.key == key), workdir)
