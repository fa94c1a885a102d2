"""Certify a benchmark's discrete answers at one or more sigmas, resumably, and tabulate certified accuracy
vs radius: yes/no questions (``yes-no`` parser) or restricted requests (``refusal`` parser: "certified
refusal", the share of requests whose refusal is certified within radius r).

Output folder::

    OUT/sigma-S/run.json         the settings that shape the records (a rerun with others is refused)
    OUT/sigma-S/records.jsonl    one record per item, appended and fsynced as produced: id, prompt, label,
                                 answer (null = abstained), correct, radius, abstained, p_lower, top,
                                 counts, selection_counts, sigma, seconds
    OUT/summary.json             settings, the table (rows per sigma), units, versions
    OUT/certified-accuracy.csv   the table; OUT/certified-accuracy.png: certified accuracy vs radius

Rerunning the same command resumes: items with a record are skipped. Certified accuracy at radius r
(Cohen et al. 2019) is the share of items certified correct (not abstained) with radius >= r.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from smoothguard.certify.core import RADIUS_UNITS, Smoothed
from smoothguard.config import GuardConfig
from smoothguard.errors import ConfigError
from smoothguard.guard import SmoothGuard
from smoothguard.models.base import MLLMAdapter
from smoothguard.provenance import versions
from smoothguard.records import EvalItem, RunFolder, write_csv, write_json_atomic
from smoothguard.stats import clopper_pearson_interval


def certify_items(
    items: Sequence[EvalItem],
    model: MLLMAdapter | Callable[[], MLLMAdapter],
    out: Path,
    *,
    guard: GuardConfig,
    sigmas: Sequence[float],
    settings: dict[str, Any],
    radii: Sequence[float],
    progress: bool | None = None,
) -> dict[str, Any]:
    """Certify every item (``meta["label"]``: its correct label, e.g. ``yes``/``no`` or ``refuse``) at each
    sigma into ``out`` and return the summary. ``guard``: the noise (``noise_space`` must be given: it sets
    the radius units), seed, clamping, purifier and batch size; its sigma is replaced by each of ``sigmas``.
    ``settings``: ``parser`` (a ``smoothguard.answers`` name), ``n0``, ``n``, ``alpha``, ``max_new_tokens``
    and identity fields (model, benchmark, ...), checked on resume with the guard's. ``model``: an adapter,
    or a loader called only if there is work left."""
    if guard.noise_space is None:
        raise ConfigError("certification needs an explicit noise space: it sets the units of the radius")
    guard = guard.replace(num_copies=0, adaptive=None, purify_clean=True, vote="cluster", parser=None)
    noise = {key: value for key, value in guard.to_dict().items() if key != "sigma"}
    settings = {**settings, "sigmas": list(sigmas), "guard": noise}
    started = time.perf_counter()
    rows, plotted = [], {}
    for sigma in sigmas:
        folder = RunFolder(out / f"sigma-{sigma:g}", _shaping(settings, sigma))
        records, todo = folder.pending(items)
        if todo:
            if callable(model):
                model = model()
            sampler = SmoothGuard(model, guard.replace(sigma=sigma))
            records += folder.write(_certificates(todo, sampler, settings, progress))
        wanted = {item.id for item in items}
        records = [record for record in records if record["id"] in wanted]
        rows.append(table_row(sigma, records, radii))
        plotted[sigma] = records
    units = RADIUS_UNITS[guard.noise_space]
    summary = {
        "settings": settings,
        "radius_units": units,
        "radii": list(radii),
        "rows": rows,
        "complete": all(row["items"] == len(items) for row in rows),
        "csv": str(_write_table(rows, radii, out / "certified-accuracy.csv")),
        "plot": str(plot_certified_accuracy(plotted, out / "certified-accuracy.png", units, _title(settings))),
        "seconds": time.perf_counter() - started,
        "versions": versions(),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def certified_accuracy(records: Sequence[dict[str, Any]], radius: float) -> float:
    """Share of ``records`` certified correct with radius >= ``radius`` (0.0 for no records)."""
    hits = sum(record["correct"] and record["radius"] >= radius for record in records)
    return hits / len(records) if records else 0.0


def table_row(sigma: float, records: Sequence[dict[str, Any]], radii: Sequence[float]) -> dict[str, Any]:
    """One row of the table: ``sigma``, ``items``, ``abstain_rate``, ``certified_accuracy`` per radius and its
    95% Clopper–Pearson interval (``certified_accuracy_ci``, over the ``items``)."""
    accuracy = {f"{radius:g}": certified_accuracy(records, radius) for radius in radii}
    n = len(records)
    return {
        "sigma": sigma,
        "items": n,
        "abstain_rate": sum(r["abstained"] for r in records) / n if records else 0.0,
        "certified_accuracy": accuracy,
        "certified_accuracy_ci": {
            radius: list(clopper_pearson_interval(round(share * n), n)) if n else [0.0, 1.0]
            for radius, share in accuracy.items()
        },
    }


def plot_certified_accuracy(
    by_sigma: dict[float, Sequence[dict[str, Any]]], path: Path, units: str, title: str
) -> Path:
    """Certified accuracy against radius, one curve per sigma (Cohen et al.'s figure), as a PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    axes = figure.subplots()
    largest = max((r["radius"] for records in by_sigma.values() for r in records), default=0.0)
    grid = [largest * 1.05 * step / 200 for step in range(201)] if largest > 0 else [0.0]
    for sigma, records in by_sigma.items():
        axes.plot(grid, [certified_accuracy(records, radius) for radius in grid], label=f"sigma {sigma:g}")
    axes.set_xlabel(f"radius ({units})")
    axes.set_ylabel("certified accuracy")
    axes.set_ylim(0, 1)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=150)
    return path


def format_table(summary: dict[str, Any]) -> list[str]:
    """The table as text lines: a row per sigma, a column per radius (Cohen et al.'s table shape)."""
    radii = [f"{radius:g}" for radius in summary["radii"]]
    lines = [
        f"certified accuracy at radius r ({summary['radius_units']}); sigma in "
        f"{summary['settings']['guard']['noise_space']} units; purifier: {summary['settings']['guard'].get('purifier')}"
        f"; {summary['settings']['parser']} parser",
        f"{'sigma':>8} {'items':>6} " + " ".join(f"{'r=' + r:>10}" for r in radii) + f" {'abstain':>8}",
    ]
    for row in summary["rows"]:
        cells = " ".join(f"{row['certified_accuracy'][r]:>10.3f}" for r in radii)
        lines.append(f"{row['sigma']:>8g} {row['items']:>6} {cells} {row['abstain_rate']:>8.3f}")
        bounds = " ".join(f"{_interval(row['certified_accuracy_ci'][r]):>10}" for r in radii)
        lines.append(f"{'95% CI':>15} {bounds}")
    return lines


def _certificates(
    items: Sequence[EvalItem], guard: SmoothGuard, settings: dict[str, Any], progress: bool | None
) -> Iterator[dict[str, Any]]:
    """One record per item, yielded as certified."""
    from smoothguard.progress import track

    sigma = guard.config.sigma
    smoothed = Smoothed(guard, settings["parser"])
    for item in track(items, f"certify sigma {sigma:g}", "item", enabled=progress):
        began = time.perf_counter()
        certificate = smoothed.certify(
            item.prompt,
            item.image,
            n0=settings["n0"],
            n=settings["n"],
            alpha=settings["alpha"],
            query_id=item.id,
            max_new_tokens=settings["max_new_tokens"],
        )
        yield {
            "id": item.id,
            "prompt": item.prompt,
            "label": item.meta["label"],
            "answer": certificate.answer,
            "correct": certificate.answer == item.meta["label"],
            "radius": certificate.radius,
            "abstained": certificate.abstained,
            "p_lower": certificate.p_lower,
            "top": certificate.top,
            "counts": certificate.counts,
            "selection_counts": certificate.selection_counts,
            "sigma": sigma,
            "seconds": time.perf_counter() - began,
        }


def _title(settings: dict[str, Any]) -> str:
    return (
        f"{settings['benchmark']} ({settings['parser']}), {settings['guard']['noise_space']} noise"
        f"{' + ' + settings['guard']['purifier'] if settings['guard'].get('purifier') else ''}: "
        f"n0={settings['n0']}, n={settings['n']}, alpha={settings['alpha']:g}"
    )


def _shaping(settings: dict[str, Any], sigma: float) -> dict[str, Any]:
    """The settings that shape the records at ``sigma`` (the batch size and the other sigmas do not)."""
    guard = {key: value for key, value in settings["guard"].items() if key != "batch_size"}
    shaping = {key: value for key, value in settings.items() if key != "sigmas"}
    return {**shaping, "guard": guard, "sigma": sigma}


def _write_table(rows: Sequence[dict[str, Any]], radii: Sequence[float], path: Path) -> Path:
    columns = ["sigma", "items", "abstain_rate", *(f"r={radius:g}" for radius in radii)]
    flat = [
        {**{k: row[k] for k in columns[:3]}, **{f"r={r}": v for r, v in row["certified_accuracy"].items()}}
        for row in rows
    ]
    return write_csv(flat, columns, path)


def _interval(bounds: Sequence[float]) -> str:
    low, high = bounds
    return f"{low:.2f}-{high:.2f}"
