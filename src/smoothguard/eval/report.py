"""The markdown report of a run: what ran, how far it got, and its score table."""

from __future__ import annotations

import json
from typing import Any

from smoothguard.stats import format_rate


def render_report(summary: dict[str, Any]) -> str:
    """Markdown for a run summary (see ``runner.evaluate``)."""
    settings = summary["settings"]
    guard = settings["guard"]
    defense = guard["defense"]
    how = (
        f"SmoothGuard, sigma {defense['sigma']} ({defense['noise_space']} space"
        f"{', purifier ' + defense['purifier'] if defense.get('purifier') else ''}), "
        f"{defense['num_copies']} noisy copies + the clean one, seed {defense['seed']}"
        f"{', parsed vote (' + defense['parser'] + ')' if defense.get('vote') == 'parsed' else ''}"
        if defense
        else "undefended"
    )
    judge = settings["judge"]
    items = summary["items"]
    state = "complete" if summary["complete"] else "incomplete: rerun the same command to resume"
    lines = [
        f"# {summary['benchmark']}: {guard['model']}",
        "",
        f"- defense: {how}",
        f"- judge: {judge['name'] if judge else 'none'}",
        f"- items: {items['done']} of {items['selected']} answered ({state}); the benchmark has {items['total']}",
        f"- max new tokens: {settings['max_new_tokens']}",
        f"- written: {summary['written_at']}",
        "",
        "## Scores",
        "",
        *score_table(summary["scores"]),
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(settings, indent=2),
        "```",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in summary['versions'].items())}",
        "",
    ]
    return "\n".join(lines)


def score_table(scores: dict[str, dict[str, Any]]) -> list[str]:
    """A markdown table: one row per group, one column per metric; a rate with an interval
    (``X``, ``X_low``, ``X_high``, its count in ``X_k`` or ``unsafe`` for ``asr``, and ``n``) is one
    cell, ``rate [lo, hi] (k/n)``."""
    if not scores:
        return ["No scores yet."]
    columns = list(dict.fromkeys(metric for group in scores.values() for metric in group))
    columns = [c for c in columns if not c.endswith(("_low", "_high", "_k"))]
    rows = ["| group | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for group, metrics in scores.items():
        rows.append(f"| {group} | " + " | ".join(_cell(metrics, c) for c in columns) + " |")
    return rows


def _cell(metrics: dict[str, Any], column: str) -> str:
    """One cell; a sweep's flattened columns (``all.asr``) find their companions in the same group."""
    group, _, name = column.rpartition(".")
    prefix = f"{group}." if group else ""
    k = metrics.get(f"{column}_k", metrics.get(f"{prefix}unsafe") if name == "asr" else None)
    n = metrics.get(f"{prefix}n")
    if f"{column}_low" in metrics and k is not None and n:
        return format_rate(int(k), int(n), (metrics[f"{column}_low"], metrics[f"{column}_high"]))
    return format_value(metrics.get(column))


def format_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
