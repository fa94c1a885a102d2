"""Sigma sweeps: one run folder per sigma (finished ones are reused), then a CSV and a PNG of the
benchmark's headline metrics against sigma (``utility-vs-sigma`` or ``asr-vs-sigma``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from smoothguard.errors import ConfigError
from smoothguard.eval.base import Benchmark, get_benchmark
from smoothguard.eval.plots import plot_vs_sigma
from smoothguard.eval.runner import GuardSpec, ModelSource, evaluate
from smoothguard.records import write_csv


def run_sweep(
    benchmark: Benchmark | str,
    spec: GuardSpec,
    sigmas: Sequence[float],
    out: str | Path,
    *,
    model: ModelSource = None,
    **evaluate_kwargs: Any,
) -> dict[str, Any]:
    """Evaluate ``benchmark`` defended at each sigma into ``out/sigma-<s>/`` (resuming or reusing those
    runs), loading the model at most once. Writes ``out/<kind>-vs-sigma.csv`` and ``.png``; returns
    ``{"rows", "csv", "plot"}``. ``evaluate_kwargs`` go to ``evaluate`` (data, options, judge, limit, ...)."""
    bench = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    if not spec.defended:
        raise ConfigError("a sweep varies the defense's sigma: keep the defense on and --num-copies >= 1")
    out = Path(out)
    source = model if model is not None and not callable(model) else functools.cache(model or spec.load_model)
    rows: list[dict[str, Any]] = []
    metrics: set[str] = set()
    for sigma in sigmas:
        at_sigma = replace(spec, guard=spec.guard.replace(sigma=sigma))
        summary = evaluate(bench, at_sigma, out / f"sigma-{sigma:g}", model=source, **evaluate_kwargs)
        flat = {
            f"{group}.{name}": value for group, values in summary["scores"].items() for name, value in values.items()
        }
        metrics |= set(flat)
        rows.append(
            {
                "sigma": sigma,
                "noise_space": summary["settings"]["guard"]["defense"]["noise_space"],
                "purifier": summary["settings"]["guard"]["defense"]["purifier"],
                "complete": summary["complete"],
                "items_done": summary["items"]["done"],
                **flat,
                "run_folder": summary["run_folder"],
            }
        )
    metric_columns = [*bench.headline, *sorted(metrics - set(bench.headline))]
    stem = "asr-vs-sigma" if bench.kind == "safety" else "utility-vs-sigma"
    out.mkdir(parents=True, exist_ok=True)
    columns = ["sigma", "noise_space", "purifier", "complete", "items_done", *metric_columns, "run_folder"]
    csv_path = write_csv(rows, columns, out / f"{stem}.csv")
    plot = plot_vs_sigma(
        rows,
        bench.headline,
        out / f"{stem}.png",
        title=f"{bench.name}: {Path(spec.model).name}, {spec.guard.num_copies} copies"
        + (f", purifier {spec.guard.purifier}" if spec.guard.purifier else ""),
        ylabel="attack success rate" if bench.kind == "safety" else "score",
        noise_space=rows[0]["noise_space"],
    )
    return {"rows": rows, "csv": str(csv_path), "plot": str(plot)}
