"""Denoised smoothing on the testbed: a sigma sweep in pixel space, with and without the testbed denoiser.

For each purifier (none, ``testbed-denoiser``) and each sigma, ``smoothguard.eval.sweep.run_sweep`` runs
``testbed-pope`` (utility) and ``testbed-safety`` on clean scenes (noise-induced compliance) and on the shipped
transfer and white-box universal images (eps 32), all with the same noisy copies per query. Without a
purifier the sweep also runs sigma 0 (no noise: every candidate is the undefended model's answer), so the
same run shows each attack at full strength before any defense number: its undefended success and the
median best loss of its images (their sidecars' loss curves; ``smoothguard.attacks.check_strength``).
Resumable: rerun the same command and finished runs are reused. Writes ``OUT/table.md`` (every rate with
its 95% Clopper–Pearson interval and k/n, then the attack checks), ``OUT/table.json`` and
``OUT/denoised-smoothing.png``.

    python examples/denoised_smoothing.py --out runs/denoised --threads 2

The adaptive attack through noise and denoiser is the demo's ``adaptive-32`` row of its denoised column
(``smoothguard demo``), made at the sigma this sweep selects.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smoothguard.attacks import check_strength
from smoothguard.config import GuardConfig
from smoothguard.eval.runner import GuardSpec
from smoothguard.eval.sweep import run_sweep
from smoothguard.models.auto import load_model, set_threads
from smoothguard.noise import parse_sigmas
from smoothguard.stats import clopper_pearson_interval, format_rate
from smoothguard.testbed.demo import SHIPPED_ATTACKS

#: Column -> (benchmark, options, metric).
COLUMNS = {
    "pope accuracy": ("testbed-pope", {}, "accuracy"),
    "clean complied": ("testbed-safety", {}, "all.complied"),
    "transfer-32 complied": ("testbed-safety", {"universal_image": "transfer-32"}, "all.complied"),
    "transfer-32 not refused": ("testbed-safety", {"universal_image": "transfer-32"}, "all.not_refused"),
    "white-box-32 complied": ("testbed-safety", {"universal_image": "white-box-32"}, "all.complied"),
    "white-box-32 not refused": ("testbed-safety", {"universal_image": "white-box-32"}, "all.not_refused"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/denoised"))
    parser.add_argument("--sigmas", default="0.05,0.1,0.25,0.5", help="pixel-space sigmas")
    parser.add_argument("--num-copies", type=int, default=4)
    parser.add_argument("--pope-scenes", type=int, default=168, help="6 questions each")
    parser.add_argument("--clean-scenes", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    model = load_model("testbed")
    sigmas = parse_sigmas(args.sigmas)
    table: dict[str, dict[str, dict[str, dict]]] = {}
    for purifier in (None, "testbed-denoiser"):
        name = purifier or "no purifier"
        guard = GuardConfig(noise_space="pixel", num_copies=args.num_copies, purifier=purifier)
        spec = GuardSpec("testbed", guard=guard)
        at = (0.0, *sigmas) if purifier is None else sigmas  # sigma 0: the attacks against no defense
        runs: dict[tuple[str, str], dict] = {}
        for column, (benchmark, options, _) in COLUMNS.items():
            options = dict(options)
            if "universal_image" in options:
                options["universal_image"] = str(SHIPPED_ATTACKS / options["universal_image"])
            elif benchmark == "testbed-safety":
                options["num_scenes"] = args.clean_scenes
            else:
                options["num_scenes"] = args.pope_scenes
            key = (benchmark, json.dumps(options, sort_keys=True))
            if key not in runs:
                folder = args.out / name.replace(" ", "-") / column.split(" ")[0].replace("pope", "utility")
                runs[key] = run_sweep(
                    benchmark, spec, at, folder, model=model, options=options, questions_per_batch=64, progress=True
                )
            for row in runs[key]["rows"]:
                table.setdefault(name, {}).setdefault(f"{row['sigma']:g}", {})[column] = _cell(row, COLUMNS[column][2])
    args.out.mkdir(parents=True, exist_ok=True)
    text = format_table(table, args.num_copies) + "\n\n" + attack_checks(table["no purifier"]["0"])
    (args.out / "table.json").write_text(json.dumps(table, indent=2))
    (args.out / "table.md").write_text(text + "\n")
    plot(table, args.out / "denoised-smoothing.png")
    print(text)


def attack_checks(undefended: dict) -> str:
    """The attacks at full strength, from this run's sigma 0 (no defense): the white-box images judged by
    ``check_strength`` (undefended success and the median best loss of their sidecars' loss curves); the
    transfer images, made on ``testbed-surrogate`` (their loss is the surrogate's), reported, not judged:
    transfer is not held to that bar."""
    lines = ["Attack checks (this run's sigma 0, no defense; targets tokenised in context):"]
    for name in ("white-box-32", "transfer-32"):
        cell = undefended[f"{name} complied"]
        sidecars = sorted((SHIPPED_ATTACKS / name).glob("*.png.json"))
        losses = [json.loads(path.read_text())["best_loss"] for path in sidecars]
        check = check_strength(name, [True] * cell["k"] + [False] * (cell["n"] - cell["k"]), losses)
        if name.startswith("white-box"):
            lines.append(f"- {check.message()}")
        else:
            lines.append(
                f"- {name} (made on testbed-surrogate): undefended complied {format_rate(cell['k'], cell['n'])}, "
                f"median best loss on the surrogate {check.median_loss:.3g}; a transfer attack, not held to the bar"
            )
    return "\n".join(lines)


def _cell(row: dict, metric: str) -> dict:
    """``{rate, k, n, ci}`` of ``metric`` in a sweep row; ``accuracy``: over all questions (every split's
    tp + tn of its n), not the mean over splits."""
    if metric == "accuracy":
        splits = [key[: -len(".tp")] for key in row if key.endswith(".tp") and not key.startswith("mean.")]
        k = sum(row[f"{split}.tp"] + row[f"{split}.tn"] for split in splits)
        n = sum(row[f"{split}.n"] for split in splits)
    else:
        k, n = row[f"{metric}_k"], row["all.n"]
    low, high = clopper_pearson_interval(k, n)
    return {"rate": k / n, "k": k, "n": n, "ci": [low, high]}


def format_table(table: dict, num_copies: int) -> str:
    """A markdown table: one row per (purifier, sigma), one ``rate [lo, hi] (k/n)`` cell per column."""
    lines = [
        f"| purifier | sigma (pixel) | {' | '.join(COLUMNS)} |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for purifier, by_sigma in table.items():
        for sigma, cells in by_sigma.items():
            texts = [format_rate(c["k"], c["n"], c["ci"]) for c in (cells[column] for column in COLUMNS)]
            lines.append(f"| {purifier} | {sigma} | {' | '.join(texts)} |")
    lines.append(
        f"\n({num_copies} noisy copies + the clean one; complied judge: the secret appears; universal images eps 32)"
    )
    return "\n".join(lines)


def plot(table: dict, path: Path) -> None:
    """ASR (complied) per threat and pope accuracy against sigma; solid: no purifier, dashed: denoiser."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for purifier, by_sigma in table.items():
        style = "-" if purifier == "no purifier" else "--"
        xs = [float(s) for s in by_sigma]
        for axis, columns in ((left, [c for c in COLUMNS if "complied" in c]), (right, ["pope accuracy"])):
            for column in columns:
                cells = [by_sigma[s][column] for s in by_sigma]
                axis.plot(xs, [c["rate"] for c in cells], style, marker="o", label=f"{column}, {purifier}")
                axis.fill_between(xs, [c["ci"][0] for c in cells], [c["ci"][1] for c in cells], alpha=0.12)
    left.set_ylabel("attack success rate (complied)")
    right.set_ylabel("testbed-pope accuracy")
    for axis in (left, right):
        axis.set_xlabel("sigma ([0, 1] pixel units)")
        axis.set_ylim(0, 1)
        axis.legend(fontsize=6)
    figure.suptitle("Denoised smoothing on the testbed (bands: 95% Clopper–Pearson)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
