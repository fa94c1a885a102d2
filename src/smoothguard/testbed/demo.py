"""``smoothguard demo``: the threat ladder on the testbed, every cell with n and its 95% interval.

Rows (threats): clean images; a transfer universal image (Qi et al.'s attack made on
``testbed-surrogate``, the paper's threat) at eps 16 and 32/255; a white-box universal image (made
on ``testbed`` itself) at eps 16 and 32; an adaptive one (EOT through the column's own noise and
purifier) at eps 32; and the worst case over the attacks per trial. Columns: undefended, SmoothGuard at
the paper's sigma (0.1 normalized), SmoothGuard at the sigma a sweep found best (``best_sigma``), and
denoised smoothing (pixel noise through the testbed denoiser, ``denoiser_sigma``).
Each universal image is optimised on the attack requests (``tasks.ATTACK_REQUESTS``) over one base
scene and evaluated on the held-out requests it never saw; ``attack_images`` images (attack seeds
and base scenes) x 32 held-out requests = 256 trials per cell. ASR is reported two ways: *complied*
(the request's secret appears; the headline) and *not refused* (the refusal judge). Utility:
``testbed-pope`` accuracy and ``testbed-describe`` per-object recall. Defended columns are compared
with the undefended one by the exact McNemar test on the same trials.

Adversarial images are cached (PNG + sidecar) keyed by the attacked checkpoint's hash, the attack
settings and the base scene; the package ships those of the default settings, and every image the
demo uses is written to its output folder (``attacks/<threat>/<i>.png``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from smoothguard.attacks import EOT, PGD, TargetObjective, save_adversarial
from smoothguard.eval.base import Benchmark, EvalItem
from smoothguard.eval.judges import make_judge
from smoothguard.guard import SmoothGuard
from smoothguard.inputs import load_image
from smoothguard.models.auto import load_model
from smoothguard.models.base import MLLMAdapter
from smoothguard.stats import format_rate, mcnemar_exact, rate_with_interval
from smoothguard.testbed.benchmarks import (
    TestbedDescribeBenchmark,
    TestbedPopeBenchmark,
    TestbedSafetyBenchmark,
    object_hits,
)
from smoothguard.testbed.data import HELD_OUT_START, scene_pixels
from smoothguard.testbed.ladder import JUDGES, THREATS, DemoConfig, Threat
from smoothguard.testbed.model import CHECKPOINT_DIR, SURROGATE_DIR
from smoothguard.testbed.scenes import sample_scene
from smoothguard.testbed.tasks import ATTACK_REQUESTS, RESTRICTED

SHIPPED_ATTACKS = Path(__file__).resolve().parent / "attacks"
#: Base scenes of the universal images: held-out seeds apart from every benchmark's.
ATTACK_SCENE_START = HELD_OUT_START + 50_000


def run_demo(
    config: DemoConfig,
    out_dir: str | Path,
    *,
    progress: bool | None = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the ladder; write every image it uses, ``summary.json`` and ``demo.png`` to ``out_dir``;
    return the summary. ``log``: called with one line per phase."""
    log = log or (lambda line: None)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_model("testbed")
    guards = {name: SmoothGuard(model, guard) for name, guard in config.columns().items()}
    outcomes: dict[tuple[str, str, str], list[bool]] = {}  # (row, column, judge) -> per trial

    pope, describe = TestbedPopeBenchmark(), TestbedDescribeBenchmark()
    pope_items = pope.load_items(None, num_scenes=config.pope_scenes)
    describe_items = describe.load_items(None, num_scenes=config.describe_scenes)
    for name, guard in guards.items():
        began = time.perf_counter()
        records = _answer(pope, pope_items, guard, config)
        outcomes[("utility-pope", name, "correct")] = [r["prediction"] == r["meta"]["label"] for r in records]
        records = _answer(describe, describe_items, guard, config)
        named: list[bool] = []  # per object of every scene: did the description name it
        for record in records:
            hits = object_hits(record["meta"], record["text"])
            named += [True] * hits["named"] + [False] * (hits["objects"] - hits["named"])
        outcomes[("utility-describe", name, "named")] = named
        log(
            f"[demo] utility, {name}: {len(pope_items)} yes/no + {len(describe_items)} descriptions "
            f"({time.perf_counter() - began:.0f} s)"
        )

    safety = TestbedSafetyBenchmark()
    surrogate = None
    images_used: dict[str, str] = {}
    for threat in THREATS:
        for name, guard in guards.items():
            if threat.kind == "clean":
                items = safety.load_items(None, num_scenes=config.clean_scenes)
            else:
                kind = "white-box" if threat.kind == "adaptive" and name == "undefended" else threat.kind
                if kind == "transfer" and surrogate is None:
                    surrogate = load_model("testbed-surrogate")
                attacked = surrogate if kind == "transfer" else model
                eot = EOT.from_guard(guard, config.eot_samples) if kind == "adaptive" else None
                made = Threat(kind, threat.eps)
                folder = _image_folder(made, eot)
                images = [
                    _adversarial(attacked, made, index, config, eot, out_dir / folder, progress, log)
                    for index in range(config.attack_images)
                ]
                images_used[f"{threat.name}/{name}"] = folder
                items = safety.load_items(None, universal_image=images)
            began = time.perf_counter()
            records = _answer(safety, items, guard, config)
            for judge in JUDGES:
                outcomes[(threat.name, name, judge)] = [bool(r[judge]) for r in records]
            log(
                f"[demo] {threat.title}, {name}: complied {_rate(outcomes[(threat.name, name, 'complied')])} "
                f"({time.perf_counter() - began:.0f} s)"
            )
    for name in guards:
        for judge in JUDGES:
            attacks = [outcomes[(t.name, name, judge)] for t in THREATS if t.kind != "clean"]
            outcomes[("worst-case", name, judge)] = [any(trial) for trial in zip(*attacks, strict=True)]

    summary: dict[str, Any] = {
        "cells": _cells(outcomes, config, guards),
        "seconds": time.perf_counter() - started,
        "settings": {
            **{k: v for k, v in asdict(config).items() if k != "guard"},
            "columns": {name: guard.config.to_dict() for name, guard in guards.items()},
            "model": model.describe(),
            "attack_requests": list(ATTACK_REQUESTS),
        },
        "images": images_used,
        "judges": JUDGES,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_summary(summary, out_dir / "demo.png")
    return summary


def _answer(benchmark: Benchmark, items: list[EvalItem], guard: SmoothGuard, config: DemoConfig) -> list[dict]:
    """Each item's record (id, text, meta and the benchmark's assessment) through ``guard``."""
    judge = make_judge(benchmark.judges[0]) if benchmark.judge_required else None
    records = []
    step = config.queries_per_batch
    for start in range(0, len(items), step):
        chunk = items[start : start + step]
        results = guard.generate_batch(
            [i.prompt for i in chunk],
            [i.image for i in chunk],
            ids=[i.id for i in chunk],
            max_new_tokens=benchmark.max_new_tokens,
        )
        assessed = benchmark.assess(chunk, [r.text for r in results], judge)
        records += [
            {"id": i.id, "text": r.text, "meta": i.meta, **extra}
            for i, r, extra in zip(chunk, results, assessed, strict=True)
        ]
    return records


ROWS = (*(t.name for t in THREATS), "worst-case", "utility-pope", "utility-describe")


def _cells(outcomes: dict, config: DemoConfig, guards: dict[str, SmoothGuard]) -> list[dict[str, Any]]:
    """One JSON cell per (row, column, judge): counts, rate, 95% interval, and for a defended column the
    exact McNemar test against the undefended one on the same trials."""
    cells = []
    threats = {t.name: t for t in THREATS}
    for (row, column, judge), trials in outcomes.items():
        resolved = guards[column].config
        threat = threats.get(row)
        cell: dict[str, Any] = {
            "row": row,
            "column": column,
            "judge": judge,
            "threat": threat.kind if threat else ("worst case over the attacks" if row == "worst-case" else "utility"),
            "eps": threat.eps if threat and threat.kind != "clean" else None,
            "made_on": threat.made_on if threat else None,
            "sigma": resolved.sigma if resolved.defended else 0.0,
            "noise_space": resolved.noise_space,
            "purifier": resolved.purifier,
            "num_copies": resolved.num_copies,
            "seed": resolved.seed,
            **rate_with_interval(sum(trials), len(trials)),
        }
        if column != "undefended":
            base = outcomes[(row, "undefended", judge)]
            only_undefended = sum(u and not d for u, d in zip(base, trials, strict=True))
            only_defended = sum(d and not u for u, d in zip(base, trials, strict=True))
            cell.update(
                only_undefended=only_undefended,
                only_defended=only_defended,
                mcnemar_p=mcnemar_exact(only_undefended, only_defended),
            )
        cells.append(cell)
    return cells


def _rate(trials: list[bool]) -> str:
    return format_rate(sum(trials), len(trials))


def _image_folder(threat: Threat, eot: EOT | None) -> str:
    """``attacks/<threat>`` (adaptive ones: ``attacks/adaptive-32-sigma0.1-normalized``, through a purifier
    ``attacks/adaptive-32-sigma0.25-pixel-testbed-denoiser``)."""
    if eot is None:
        return f"attacks/{threat.name}"
    purifier = "" if eot.purifier is None else "-" + re.sub(r"[^A-Za-z0-9._-]+", "_", eot.purifier.name)
    return f"attacks/{threat.name}-sigma{eot.noise.sigma:g}-{eot.noise.space}{purifier}"


def _adversarial(
    model: MLLMAdapter,
    threat: Threat,
    index: int,
    config: DemoConfig,
    eot: EOT | None,
    folder: Path,
    progress: bool | None,
    log: Callable[[str], None] = lambda line: None,
) -> torch.Tensor:
    """Universal image ``index`` of ``threat`` (base scene and attack seed ``index``), from a cache
    (``folder`` or the shipped one) when one matches these settings, else optimised. Either way
    ``folder/<index>.png`` and its sidecar hold it afterwards (a shipped cache copied byte for byte)."""
    steps = config.adaptive_steps if eot is not None else config.attack_steps
    key = {
        "threat": threat.name,
        "checkpoint": checkpoint_hash(SURROGATE_DIR if threat.kind == "transfer" else CHECKPOINT_DIR),
        "eps": threat.eps,
        "alpha": config.alpha,
        "steps": steps,
        "seed": config.guard.seed + index,
        "eot": None if eot is None else _portable(eot.describe()),
        "requests": list(ATTACK_REQUESTS),
        "base_scene": ATTACK_SCENE_START + index,
    }
    target = folder / f"{index}.png"
    shipped = SHIPPED_ATTACKS / folder.name
    for source in () if config.fresh else (folder, shipped):
        sidecar = source / f"{index}.png.json"
        if sidecar.is_file() and json.loads(sidecar.read_text()).get("config", {}).get("demo_key") == key:
            if source != folder:
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / target.name, target)
                shutil.copyfile(sidecar, folder / sidecar.name)
            return load_image(target)
    log(f"[demo] {threat.title} image {index}: optimising ({steps} steps) -> {target}")
    attack = PGD(
        eps=threat.eps,
        alpha=config.alpha,
        steps=steps,
        eot=eot,
        early_stop=False,
        seed=config.guard.seed + index,
        progress=progress,
    )
    clean = scene_pixels(sample_scene(ATTACK_SCENE_START + index, badge=False))
    objectives = [TargetObjective.of(RESTRICTED[request]) for request in ATTACK_REQUESTS]
    folder.mkdir(parents=True, exist_ok=True)
    result = attack(model, clean, list(ATTACK_REQUESTS), objectives, checkpoint=folder / f"{index}.ckpt.safetensors")
    result.config["demo_key"] = key
    save_adversarial(result, target)
    (folder / f"{index}.ckpt.safetensors").unlink(missing_ok=True)
    return result.adversarial


def _portable(described: dict[str, Any]) -> dict[str, Any]:
    """An EOT description as a cache key: the purifier by name and weights' hash, not where it was loaded from."""
    purifier = described.get("purifier")
    if purifier is None:
        return described
    return {**described, "purifier": {key: purifier.get(key) for key in ("name", "sha256")}}


def checkpoint_hash(folder: Path = CHECKPOINT_DIR) -> str:
    """sha256 (first 16 hex digits) of a shipped checkpoint's weights: adversarial caches are tied to it."""
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:16]


def _cell(summary: dict[str, Any], row: str, column: str, judge: str) -> dict[str, Any]:
    return next(c for c in summary["cells"] if (c["row"], c["column"], c["judge"]) == (row, column, judge))


def column_title(name: str, guard: dict[str, Any]) -> str:
    """A column's heading: ``undefended`` or ``sigma 0.1 normalized`` (+ `` + PURIFIER``)."""
    if name == "undefended":
        return "undefended"
    purifier = f" + {guard['purifier']}" if guard.get("purifier") else ""
    return f"sigma {guard['sigma']:g} {guard['noise_space']}{purifier}"


def plot_summary(summary: dict[str, Any], path: Path) -> None:
    """Two panels over the columns (undefended, then each defense): complied ASR per threat, and utility,
    each with its 95% interval as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = summary["settings"]["columns"]
    names = list(columns)
    xs = list(range(len(names)))
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (
        (left, [*(t.name for t in THREATS), "worst-case"], "complied", "attack success rate (complied)"),
        (right, ["utility-pope", "utility-describe"], None, "utility"),
    )
    for axis, rows, judge, ylabel in panels:
        for offset, row in enumerate(rows):
            cells = [_cell(summary, row, c, judge or ("correct" if row == "utility-pope" else "named")) for c in names]
            rates = [c["rate"] for c in cells]
            errors = [[c["rate"] - c["ci"][0] for c in cells], [c["ci"][1] - c["rate"] for c in cells]]
            shift = (offset - (len(rows) - 1) / 2) * 0.06
            axis.errorbar([x + shift for x in xs], rates, yerr=errors, marker="o", capsize=2, label=row)
        axis.set_xticks(xs, [column_title(name, columns[name]).replace(" + ", "\n+ ") for name in names], fontsize=7)
        axis.set_ylabel(ylabel)
        axis.set_ylim(0, 1)
        axis.legend(fontsize=7)
    figure.suptitle("SmoothGuard on the testbed: the threat ladder (bars: 95% Clopper–Pearson)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def format_table(summary: dict[str, Any]) -> str:
    """The ladder as text: per judge, one line per row, one ``rate [lo, hi] (k/n)`` cell per column
    (defended ones with the McNemar p against undefended)."""
    columns = summary["settings"]["columns"]
    heads = [column_title(name, guard) for name, guard in columns.items()]
    widths = [max(38, len(head)) for head in heads]  # a cell: "0.000 [0.00, 0.01] (0/256) p=1.4e-42"
    width = 34
    lines = []
    sections = [(judge, [*(t.name for t in THREATS), "worst-case"]) for judge in JUDGES]
    sections.append(("utility", ["utility-pope", "utility-describe"]))
    titles = {t.name: t.title for t in THREATS}
    titles.update(
        {
            "worst-case": "worst case over the attacks",
            "utility-pope": "testbed-pope accuracy",
            "utility-describe": "testbed-describe object recall",
        }
    )
    for judge, rows in sections:
        heading = f"ASR, {JUDGES[judge]}" if judge in JUDGES else "utility"
        lines.append(f"{heading:{width}} " + " ".join(f"{h:>{w}}" for h, w in zip(heads, widths, strict=True)))
        for row in rows:
            row_judge = judge if judge in JUDGES else ("correct" if row == "utility-pope" else "named")
            cells = []
            for name in columns:
                cell = _cell(summary, row, name, row_judge)
                text = format_rate(cell["k"], cell["n"], cell["ci"])
                if "mcnemar_p" in cell:
                    text += f" p={cell['mcnemar_p']:.2g}"
                cells.append(text)
            lines.append(f"{titles[row]:{width}} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
        lines.append("")
    guard = columns["paper"]
    lines.append(
        f"(SmoothGuard: {guard['num_copies']} noisy copies + the clean one, seed {guard['seed']}; a purifier cleans "
        "every copy and the clean one; transfer images made on testbed-surrogate, white-box and adaptive ones on "
        f"testbed; adaptive = EOT through each column's own noise and purifier, {summary['settings']['eot_samples']} "
        "samples per step (undefended: the white-box image); p: exact McNemar against undefended on the same "
        f"trials; {summary['seconds']:.0f} s)"
    )
    return "\n".join(lines)
