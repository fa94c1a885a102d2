"""Metric-versus-sigma figures (PNG, matplotlib's Agg canvas, no pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_vs_sigma(
    rows: Sequence[dict[str, Any]], metrics: Sequence[str], path: Path, *, title: str, ylabel: str, noise_space: str
) -> Path:
    """One line per metric key of ``rows`` (each row has ``sigma`` and those keys) against sigma, whose
    ``noise_space`` the x-axis names."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 3.8), layout="constrained")
    axes = figure.subplots()
    ordered = sorted(rows, key=lambda row: row["sigma"])
    for metric in metrics:
        points = [(row["sigma"], row[metric]) for row in ordered if row.get(metric) is not None]
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", label=metric)
    axes.set_xlabel(f"sigma (noise std, {noise_space} units)")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend()
    figure.savefig(path, dpi=150)
    return path
