"""``smoothguard demo``: the threat ladder on the testbed, every cell with n and its 95% interval.

Rows (threats): clean images; a transfer universal image (Qi et al.'s attack made on
``testbed-surrogate``, the paper's threat) at eps 16 and 32/255; a white-box universal image (made
on ``testbed`` itself) at eps 16 and 32; an adaptive one (EOT through every candidate the column votes
over) at eps 32; per-request attacks (one image per held-out request: white-box against the undefended
model, adaptive against each defense) at eps 8, 16 and 32; the worst case over the universal attacks per
trial, and over every attack per request. Columns: undefended, SmoothGuard at
the paper's sigma (0.1 normalized), SmoothGuard at the sigma a sweep found best (``best_sigma``), and
denoised smoothing (pixel noise through the testbed denoiser, ``denoiser_sigma``).
Each universal image is optimised on the attack requests (``tasks.ATTACK_REQUESTS``) over one base
scene and evaluated on the held-out requests it never saw; ``attack_images`` images (attack seeds
and base scenes) x 32 held-out requests = 128 trials per cell. Each per-request image is optimised for
its one held-out request on a scene of its own: 32 trials per cell. Before any defense number counts, the
attacks are checked on the undefended model (``attacks.strength``): the table says when one is broken.
ASR is reported two ways: *complied*
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
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from smoothguard.attacks import EOT, PGD, TargetObjective, check_strength, save_adversarial
from smoothguard.eval.base import Benchmark, EvalItem
from smoothguard.eval.runner import answer_records, resolve_judge
from smoothguard.guard import SmoothGuard
from smoothguard.inputs import load_image
from smoothguard.models.auto import load_model
from smoothguard.models.base import MLLMAdapter
from smoothguard.stats import format_rate, mcnemar_exact, rate_with_interval
from smoothguard.testbed import ASSETS
from smoothguard.testbed.benchmarks import (
    TestbedDescribeBenchmark,
    TestbedPopeBenchmark,
    TestbedSafetyBenchmark,
    object_hits,
    request_item,
)
from smoothguard.testbed.data import HELD_OUT_START, scene_pixels
from smoothguard.testbed.ladder import JUDGES, THREATS, DemoConfig, Threat
from smoothguard.testbed.model import CHECKPOINT_DIR, SURROGATE_DIR
from smoothguard.testbed.scenes import sample_scene
from smoothguard.testbed.tasks import ATTACK_REQUESTS, HELD_OUT_REQUESTS, RESTRICTED

#: The shipped adversarial images of the default settings (one folder per ``_image_folder``).
SHIPPED_ATTACKS = ASSETS / "attacks"
#: Base scenes of the universal images: held-out seeds apart from every benchmark's.
ATTACK_SCENE_START = HELD_OUT_START + 50_000
#: Scenes of the per-request images (request j on scene PER_REQUEST_SCENE_START + j).
PER_REQUEST_SCENE_START = ATTACK_SCENE_START + 1_000
#: Attack rows whose undefended success must reach ``attacks.strength.MIN_SUCCESS`` (issue 21's bar).
REQUIRED_STRENGTH = ("white-box-32", "per-request-16")
#: Every demo attack's step-size schedule.
SCHEDULE = "cosine"


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
    images_used: dict[str, dict[str, Any]] = {}
    for threat in THREATS:
        for name, guard in guards.items():
            if not config.runs(threat, name):
                continue
            if threat.kind == "clean":
                items = safety.load_items(None, num_scenes=config.clean_scenes)
            else:
                if threat.kind == "transfer" and surrogate is None:
                    surrogate = load_model("testbed-surrogate")
                attacked = surrogate if threat.kind == "transfer" else model
                items, images_used[f"{threat.name}/{name}"] = _attack_items(
                    attacked, threat, name, guard, config, out_dir, progress, log
                )
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
            outcomes.update(_worst_cases(outcomes, name, judge, config.per_request_images))
    checks = [
        check_strength(
            t.title, outcomes[(t.name, "undefended", "complied")], images_used[f"{t.name}/undefended"]["best_losses"]
        ).to_dict()
        | {"row": t.name, "required": t.name in REQUIRED_STRENGTH}
        for t in THREATS
        if t.kind != "clean"
    ]

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
        "attack_checks": checks,
        "judges": JUDGES,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_summary(summary, out_dir / "demo.png")
    return summary


def _attack_items(
    attacked: MLLMAdapter,
    threat: Threat,
    column: str,
    guard: SmoothGuard,
    config: DemoConfig,
    out_dir: Path,
    progress: bool | None,
    log: Callable[[str], None],
) -> tuple[list[EvalItem], dict[str, Any]]:
    """The safety items of attack row ``threat`` against ``column`` (``guard``), and where its images are
    with their best losses. The undefended column's adaptive rows run the white-box attack (no noise to
    adapt to); a defended column's adaptive and per-request rows are made through ``guard`` (EOT)."""
    undefended = column == "undefended"
    kind = "white-box" if threat.kind == "adaptive" and undefended else threat.kind
    adaptive = kind == "adaptive" or (kind == "per-request" and not undefended)
    eot = EOT.from_guard(guard, config.eot_samples) if adaptive else None
    made = Threat(kind, threat.eps)
    folder = _image_folder(made, eot)
    count = config.per_request_images if kind == "per-request" else config.attack_images
    made_images = [
        _adversarial(attacked, made, index, config, eot, out_dir / folder, progress, log) for index in range(count)
    ]
    used = {"folder": folder, "best_losses": [record["best_loss"] for _, record in made_images]}
    images = [image for image, _ in made_images]
    if kind == "per-request":
        return [request_item(j, HELD_OUT_REQUESTS[j], image) for j, image in enumerate(images)], used
    return TestbedSafetyBenchmark().load_items(None, universal_image=images), used


def _worst_cases(outcomes: dict, column: str, judge: str, requests: int) -> dict[tuple[str, str, str], list[bool]]:
    """``column``'s two worst-case rows for ``judge``: per trial over the universal rows it ran (their trials
    line up: image-major, one per held-out request), and per attacked request (the first ``requests``) over
    every attack row it ran (a universal row wins a request when any of its images does)."""
    ran = [t for t in THREATS if t.kind != "clean" and (t.name, column, judge) in outcomes]
    universal = [outcomes[(t.name, column, judge)] for t in ran if t.universal]
    per_request = [outcomes[(t.name, column, judge)] for t in ran if not t.universal]
    held_out = len(HELD_OUT_REQUESTS)
    return {
        ("worst-universal", column, judge): [any(trial) for trial in zip(*universal, strict=True)],
        ("worst-request", column, judge): [
            any(any(trials[j::held_out]) for trials in universal) or any(trials[j] for trials in per_request)
            for j in range(requests)
        ],
    }


def _answer(benchmark: Benchmark, items: list[EvalItem], guard: SmoothGuard, config: DemoConfig) -> list[dict]:
    """Each item's record (the runner's: id, text, meta, ... and the benchmark's assessment) through ``guard``,
    ``config.queries_per_batch`` items per ``generate_batch`` call (``eval.runner.answer_records``; the demo
    keeps no run folder)."""
    judge = resolve_judge(benchmark, None)
    tokens = benchmark.max_new_tokens
    return list(answer_records(benchmark, guard, judge, items, config.queries_per_batch, tokens, progress=False))


WORST_ROWS = {
    "worst-universal": "worst case, universal attacks (per trial)",
    "worst-request": "worst case per request, any attack",
}


def _cells(outcomes: dict, config: DemoConfig, guards: dict[str, SmoothGuard]) -> list[dict[str, Any]]:
    """One JSON cell per (row, column, judge) that ran: counts, rate, 95% interval, the attack actually run
    (an adaptive row's undefended cell runs the white-box attack), and for a defended column the exact
    McNemar test against the undefended one on the same trials."""
    cells = []
    threats = {t.name: t for t in THREATS}
    for (row, column, judge), trials in outcomes.items():
        resolved = guards[column].config
        threat = threats.get(row)
        attack = None
        if threat is not None and threat.kind != "clean":
            adaptive = threat.kind in ("adaptive", "per-request") and column != "undefended"
            attack = "adaptive" if adaptive else ("transfer" if threat.kind == "transfer" else "white-box")
        cell: dict[str, Any] = {
            "row": row,
            "column": column,
            "judge": judge,
            "threat": threat.kind if threat else WORST_ROWS.get(row, "utility"),
            "attack": attack,
            "universal": threat.universal if threat else None,
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
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Image ``index`` of ``threat`` and its sidecar record: a universal image (base scene and attack seed
    ``index``, optimised on the attack requests) or, for ``per-request``, the image of held-out request
    ``index`` (its own scene and seed). From a cache (``folder`` or the shipped one) when one matches these
    settings, else optimised. Either way ``folder/<index>.png`` and its sidecar hold it afterwards (a
    shipped cache copied byte for byte)."""
    per_request = threat.kind == "per-request"
    if per_request:
        steps, scene = config.per_request_steps, PER_REQUEST_SCENE_START + index
        requests = [HELD_OUT_REQUESTS[index]]
    else:
        steps = config.adaptive_steps if eot is not None else config.attack_steps
        scene, requests = ATTACK_SCENE_START + index, list(ATTACK_REQUESTS)
    key = {
        "threat": threat.name,
        "checkpoint": checkpoint_hash(SURROGATE_DIR if threat.kind == "transfer" else CHECKPOINT_DIR),
        "eps": threat.eps,
        "alpha": config.alpha,
        "steps": steps,
        "schedule": SCHEDULE,
        "seed": config.guard.seed + index,
        "eot": None if eot is None else _portable(eot.describe()),
        "requests": requests,
        "base_scene": scene,
        "targets": "in context",
    }
    target = folder / f"{index}.png"
    shipped = SHIPPED_ATTACKS / folder.name
    for source in () if config.fresh else (folder, shipped):
        sidecar = source / f"{index}.png.json"
        record = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        if record.get("config", {}).get("demo_key") == key:
            if source != folder:
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / target.name, target)
                shutil.copyfile(sidecar, folder / sidecar.name)
            return load_image(target), record
    log(f"[demo] {threat.title} image {index}: optimising ({steps} steps) -> {target}")
    attack = PGD(
        eps=threat.eps,
        alpha=config.alpha,
        steps=steps,
        schedule=SCHEDULE,
        eot=eot,
        early_stop=False,
        seed=config.guard.seed + index,
        progress=progress,
    )
    clean = scene_pixels(sample_scene(scene, badge=False))
    objectives = [TargetObjective.of(RESTRICTED[request]) for request in requests]
    folder.mkdir(parents=True, exist_ok=True)
    result = attack(model, clean, requests, objectives, checkpoint=folder / f"{index}.ckpt.safetensors")
    result.config["demo_key"] = key
    sidecar = save_adversarial(result, target)
    (folder / f"{index}.ckpt.safetensors").unlink(missing_ok=True)
    return result.adversarial, json.loads(sidecar.read_text())


def _portable(described: dict[str, Any]) -> dict[str, Any]:
    """An EOT description as a cache key: the purifier by name and weights' hash, not where it was loaded from."""
    purifier = described.get("purifier")
    if purifier is None:
        return described
    return {**described, "purifier": {key: purifier.get(key) for key in ("name", "sha256")}}


def checkpoint_hash(folder: Path = CHECKPOINT_DIR) -> str:
    """sha256 (first 16 hex digits) of a shipped checkpoint's weights: adversarial caches are tied to it."""
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()[:16]


def _cell(summary: dict[str, Any], row: str, column: str, judge: str) -> dict[str, Any] | None:
    """The cell of (row, column, judge), or ``None`` where the ladder did not run it."""
    return next((c for c in summary["cells"] if (c["row"], c["column"], c["judge"]) == (row, column, judge)), None)


def _utility_judge(row: str) -> str:
    return "correct" if row == "utility-pope" else "named"


def column_title(name: str, guard: dict[str, Any]) -> str:
    """A column's heading: ``undefended`` or ``sigma 0.1 normalized`` (+ `` + PURIFIER``)."""
    if name == "undefended":
        return "undefended"
    purifier = f" + {guard['purifier']}" if guard.get("purifier") else ""
    return f"sigma {guard['sigma']:g} {guard['noise_space']}{purifier}"


def plot_summary(summary: dict[str, Any], path: Path) -> None:
    """Three panels: complied ASR of each universal threat and of the worst cases per column; the
    robustness curve (complied ASR against eps of the per-request attacks, eps 0 = clean images) per
    column, with its 95% band; and utility per column. Error bars and bands: 95% Clopper–Pearson."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = summary["settings"]["columns"]
    names = list(columns)
    xs = list(range(len(names)))
    labels = [column_title(name, columns[name]).replace(" + ", "\n+ ") for name in names]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.6))
    universal = [t.name for t in THREATS if t.kind == "clean" or t.universal]
    panels = (
        (left, [*universal, *WORST_ROWS], "complied", "attack success rate (complied)"),
        (right, ["utility-pope", "utility-describe"], None, "utility"),
    )
    for axis, rows, judge, ylabel in panels:
        for offset, row in enumerate(rows):
            cells = [(x, _cell(summary, row, c, judge or _utility_judge(row))) for x, c in zip(xs, names, strict=True)]
            cells = [(x, c) for x, c in cells if c is not None]
            shift = (offset - (len(rows) - 1) / 2) * 0.06
            axis.errorbar(
                [x + shift for x, _ in cells],
                [c["rate"] for _, c in cells],
                yerr=[[c["rate"] - c["ci"][0] for _, c in cells], [c["ci"][1] - c["rate"] for _, c in cells]],
                marker="o",
                capsize=2,
                linestyle="none",
                label=row,
            )
        axis.set_xticks(xs, labels, fontsize=7)
        axis.set_ylabel(ylabel)
        axis.set_ylim(0, 1)
        axis.legend(fontsize=7)
    curve = [t for t in THREATS if t.kind == "per-request"]
    styles = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-.")]  # overlapping curves stay visible
    for index, name in enumerate(names):
        marker, linestyle = styles[index % len(styles)]
        points = [(0.0, _cell(summary, "clean", name, "complied"))]
        points += [(t.eps, _cell(summary, t.name, name, "complied")) for t in curve]
        points = [(eps, c) for eps, c in points if c is not None]
        eps = [e for e, _ in points]
        line = middle.plot(
            eps,
            [c["rate"] for _, c in points],
            marker=marker,
            linestyle=linestyle,
            markersize=7 - index,
            label=column_title(name, columns[name]),
        )
        middle.fill_between(
            eps, [c["ci"][0] for _, c in points], [c["ci"][1] for _, c in points], alpha=0.15, color=line[0].get_color()
        )
    middle.set_xlabel("per-request attack budget eps (L-inf, /255; 0 = clean)")
    middle.set_ylabel("attack success rate (complied)")
    middle.set_ylim(0, 1)
    middle.legend(fontsize=7)
    middle.set_title("robustness curve: per-request attacks", fontsize=9)
    figure.suptitle("SmoothGuard on the testbed: the threat ladder (bars and bands: 95% Clopper–Pearson)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def format_table(summary: dict[str, Any]) -> str:
    """The ladder as text: per judge, one line per row, one ``rate [lo, hi] (k/n)`` cell per column
    (defended ones with the McNemar p against undefended; ``not run`` where the ladder skips a cell); then
    the median best loss of each attack's images, and the attack checks on the undefended model."""
    columns = summary["settings"]["columns"]
    heads = [column_title(name, guard) for name, guard in columns.items()]
    widths = [max(38, len(head)) for head in heads]  # a cell: "0.000 [0.00, 0.01] (0/256) p=1.4e-42"
    width = 42
    lines = []
    attack_rows = [t.name for t in THREATS if t.kind != "clean"]
    sections = [(judge, [*(t.name for t in THREATS), *WORST_ROWS]) for judge in JUDGES]
    sections.append(("utility", ["utility-pope", "utility-describe"]))
    titles = {t.name: t.title for t in THREATS}
    titles.update(WORST_ROWS)
    titles.update({"utility-pope": "testbed-pope accuracy", "utility-describe": "testbed-describe object recall"})

    def line(title: str, cells: list[str]) -> str:
        return f"{title:{width}} " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))

    for judge, rows in sections:
        lines.append(line(f"ASR, {JUDGES[judge]}" if judge in JUDGES else "utility", heads))
        for row in rows:
            cells = []
            for name in columns:
                cell = _cell(summary, row, name, judge if judge in JUDGES else _utility_judge(row))
                text = "not run" if cell is None else format_rate(cell["k"], cell["n"], cell["ci"])
                if cell is not None and "mcnemar_p" in cell:
                    text += f" p={cell['mcnemar_p']:.2g}"
                cells.append(text)
            lines.append(line(titles[row], cells))
        lines.append("")
    lines.append(line("median best loss of the attack's images", heads))
    for row in attack_rows:
        losses = [summary["images"].get(f"{row}/{name}", {}).get("best_losses") for name in columns]
        lines.append(line(titles[row], ["not run" if not x else f"{statistics.median(x):.3g}" for x in losses]))
    lines.append("")
    lines.append(
        "attack checks (each attack against the undefended model, in this run; targets tokenised in context; "
        "required rows marked *):"
    )
    for check in summary["attack_checks"]:
        mark = "*" if check["required"] else " "
        verdict = "ok" if check["working"] else ("BROKEN ATTACK" if check["required"] else "weaker than the bar")
        lines.append(
            f" {mark} {titles[check['row']]:{width - 3}} undefended complied {check['successes']}/{check['trials']}"
            f" = {check['rate']:.3f}, median best loss {check['median_best_loss']:.3g}: {verdict}"
        )
    broken = [c for c in summary["attack_checks"] if c["required"] and not c["working"]]
    if broken:
        lines.append(
            "BROKEN ATTACK: "
            + ", ".join(titles[c["row"]] for c in broken)
            + f" do not drive the undefended model to >= {broken[0]['min_success']:.0%} with a converged loss; "
            "the defense numbers against them show nothing"
        )
    lines.append("")
    guard = columns["paper"]
    settings = summary["settings"]
    lines.append(
        f"(SmoothGuard: {guard['num_copies']} noisy copies + the clean one, seed {guard['seed']}; a purifier cleans "
        "every copy and the clean one; transfer images made on testbed-surrogate, white-box and adaptive ones on "
        f"testbed; every attack PGD with a cosine step schedule, its lowest-loss iterate kept; adaptive = EOT "
        f"through each column's {settings['eot_samples']} noisy copies and its clean candidate per step "
        "(undefended: the white-box attack); "
        f"universal: {settings['attack_images']} images x 32 held-out requests, per-request: one image per "
        f"held-out request ({settings['per_request_steps']} steps); not run: no adaptive universal image for "
        "noise alone, which already falls to the plain ones; p: exact McNemar against undefended on the same "
        f"trials; {summary['seconds']:.0f} s)"
    )
    return "\n".join(lines)
