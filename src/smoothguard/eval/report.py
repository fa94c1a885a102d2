"""The markdown report of a run: what ran, how far it got, and its score table."""

from __future__ import annotations

import json
from typing import Any


def render_report(summary: dict[str, Any]) -> str:
    """Markdown for a run summary (see ``runner.evaluate``)."""
    settings = summary["settings"]
    guard = settings["guard"]
    defense = guard["defense"]
    how = (
        f"SmoothGuard, sigma {defense['sigma']} ({defense['noise_space']} space), "
        f"{defense['num_copies']} noisy copies + the clean one, seed {defense['seed']}"
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
    """A markdown table: one row per group, one column per metric."""
    if not scores:
        return ["No scores yet."]
    columns = list(dict.fromkeys(metric for group in scores.values() for metric in group))
    rows = ["| group | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for group, metrics in scores.items():
        rows.append(f"| {group} | " + " | ".join(format_value(metrics.get(c)) for c in columns) + " |")
    return rows


def format_value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
