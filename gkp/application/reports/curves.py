"""Security curves: robust accuracy as a function of the perturbation budget eps, from the per-sample
smallest adversarial norms a minimum-norm attack (FMN, C&W) recorded (``per_sample_<model>.npz``).

A sample counts as robust at eps when its smallest adversarial perturbation is larger than eps (0 for a
sample the model already misclassifies, infinite when the attack found none), so one run of the attack
gives the whole curve. Several runs go on one figure (PNG, matplotlib) and in one CSV.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from gkp.foundation.errors import RunFolderError
from gkp.foundation.files import replaced_atomically


def robust_accuracy(norms: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """Share of samples whose smallest adversarial norm exceeds each budget."""
    return (norms[None, :] > budgets[:, None]).mean(axis=1)


def load_norms(run: str | Path, attack: str, model: str = "final") -> tuple[str, np.ndarray]:
    """(run name, per-sample norms of ``attack``) from a run folder."""
    run = Path(run)
    path = run / f"per_sample_{model}.npz"
    if not path.is_file():
        raise RunFolderError(f"{path} does not exist: evaluate model '{model}' of that run first (gkp eval CONFIG)")
    with np.load(path) as arrays:
        key = f"{attack}_norm"
        if key not in arrays:
            found = sorted(k[: -len("_norm")] for k in arrays.files if k.endswith("_norm"))
            raise RunFolderError(
                f"{path} has no norms for attack '{attack}'; minimum-norm attacks there: "
                f"{', '.join(found) or 'none (add fmn or cw_l2 to the attacks)'}"
            )
        norms = arrays[key]
    results = run / "results.json"
    name = json.loads(results.read_text())["name"] if results.is_file() else run.name
    return name, norms


def load_curves(entries: list[str], attack: str, default_model: str = "final") -> list[tuple[str, np.ndarray]]:
    """(curve name, norms) for each ``RUN_DIR`` or ``RUN_DIR:MODEL`` entry (say ``runs/a:dense``); a curve
    is named after its run, and after ``run/model`` when the entries do not all use one model."""
    chosen = [_folder_and_model(entry, default_model) for entry in entries]
    one_model = len({model for _, model in chosen}) == 1
    curves = []
    for folder, model in chosen:
        name, norms = load_norms(folder, attack, model)
        curves.append((name if one_model else f"{name}/{model}", norms))
    return curves


def _folder_and_model(entry: str, default_model: str) -> tuple[str, str]:
    folder, colon, model = entry.rpartition(":")
    if colon and model and "/" not in model and Path(folder).is_dir():
        return folder, model
    return entry, default_model


def write_curves(
    runs: list[tuple[str, np.ndarray]],
    csv_path: str | Path,
    png_path: str | Path | None,
    attack: str,
    points: int = 101,
) -> np.ndarray:
    """Write the curves of ``runs`` to a CSV (budget, then one column per run) and a PNG; returns the budgets."""
    finite = np.concatenate([norms[np.isfinite(norms)] for _, norms in runs])
    top = float(finite.max()) if finite.size else 1.0
    budgets = np.linspace(0.0, top * 1.05, points)
    curves = [robust_accuracy(norms, budgets) for _, norms in runs]
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["eps", *(name for name, _ in runs)])
        writer.writerows(
            [f"{budget:.6g}", *(f"{curve[i]:.6f}" for curve in curves)] for i, budget in enumerate(budgets)
        )
    if png_path is not None:
        plt = _pyplot()
        figure, axes = plt.subplots(figsize=(5, 3.5))
        for (name, _), curve in zip(runs, curves, strict=True):
            axes.plot(budgets, 100 * curve, label=name)
        axes.set(xlabel=f"eps ({attack})", ylabel="robust accuracy (%)", ylim=(0, 100), title="security curves")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(png_path, dpi=120)
        plt.close(figure)
    return budgets


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def write_training_curves(metrics_csv: str | Path, png_path: str | Path) -> None:
    """The run's metrics.csv as a figure: training loss, and training and evaluation accuracy (benign and
    each tracked attack) per epoch, the stages one after another on the epoch axis."""
    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    stages = list(dict.fromkeys(row["stage"] for row in rows))
    offsets, start = {}, 0
    for stage in stages:
        offsets[stage] = start
        start += max(int(row["epoch"]) for row in rows if row["stage"] == stage)
    evaluated = [c for c in rows[0] if c.startswith(("test_", "val_"))]
    for row in rows[1:]:
        evaluated += [c for c in row if c.startswith(("test_", "val_")) and c not in evaluated]
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    panels = (("loss", ("train_loss",)), ("accuracy (%)", ("train_accuracy", *evaluated)))
    for axis, (title, columns) in zip(axes, panels, strict=True):
        for stage in stages:
            for column in columns:
                points = [
                    (offsets[stage] + int(row["epoch"]), float(row[column]) * (100 if "accuracy" in title else 1))
                    for row in rows
                    if row["stage"] == stage and row.get(column) not in (None, "")
                ]
                if points:
                    axis.plot(*zip(*points, strict=True), marker=".", label=f"{stage}: {column}")
        axis.set(xlabel="epoch (stages one after another)", title=title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    with replaced_atomically(Path(png_path), ".png") as temporary:  # rank 0 alone writes it
        figure.savefig(temporary, dpi=110)
    plt.close(figure)


def _best_per_metric(results: dict) -> dict[str, float]:
    """The best accuracy (%) of each metric (benign and each bounded attack) over a run's evaluated models,
    the dense model left out (the paper's best checkpoints are the pruned model's)."""
    best: dict[str, float] = {}
    entries = [results, *results.get("other_models", [])]
    for entry in [e for e in entries if not e["model"].startswith("dense")] or entries:
        scores = {"benign": entry["benign"]["accuracy"]}
        scores |= {a["label"]: a["accuracy"] for a in entry["attacks"] if a["params"].get("eps") is not None}
        for metric, value in scores.items():
            best[metric] = max(best.get(metric, 0.0), 100 * value)
    return best


def write_comparison_plots(runs: list[dict], names: list[str], prefix: str) -> list[str]:
    """``PREFIX_best.png``: each run's best accuracy per metric as grouped bars (the paper's Figs. 5-9);
    ``PREFIX_sparsity.png``, where the runs have rates: the main model's accuracy per metric against the
    pruning rate, a line per method. Returns the files written."""
    plt = _pyplot()
    best = [_best_per_metric(results) for results in runs]
    metrics = list(dict.fromkeys(metric for scores in best for metric in scores))
    figure, axis = plt.subplots(figsize=(max(5, 1.2 * len(metrics) * max(1, len(runs)) / 2), 3.5))
    width = 0.8 / len(runs)
    for i, (name, scores) in enumerate(zip(names, best, strict=True)):
        positions = [m + i * width for m in range(len(metrics))]
        axis.bar(positions, [scores.get(metric, 0.0) for metric in metrics], width, label=name)
    axis.set_xticks([m + 0.4 - width / 2 for m in range(len(metrics))], metrics)
    axis.set(ylabel="best accuracy (%)", ylim=(0, 100), title="best per metric")
    axis.legend(fontsize=7)
    figure.tight_layout()
    written = [f"{prefix}_best.png"]
    figure.savefig(written[0], dpi=110)
    plt.close(figure)
    rated = [(r, s) for r, s in zip(runs, best, strict=True) if r.get("rate") is not None and r.get("method")]
    if rated:
        written.append(_sparsity_plot(plt, rated, metrics, f"{prefix}_sparsity.png"))
    return written


def _sparsity_plot(plt, rated: list[tuple[dict, dict]], metrics: list[str], path: str) -> str:
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
    methods = list(dict.fromkeys(results["method"] for results, _ in rated))
    for axis, metric in zip(axes[0], metrics, strict=True):
        for method in methods:
            points = sorted(
                (results["rate"], 100 * _main_accuracy(results, metric))
                for results, _ in rated
                if results["method"] == method and _main_accuracy(results, metric) is not None
            )
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=method)
        axis.set(xlabel="pruning rate", title=metric, ylim=(0, 100))
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _main_accuracy(results: dict, metric: str) -> float | None:
    if metric == "benign":
        return results["benign"]["accuracy"]
    return next((a["accuracy"] for a in results["attacks"] if a["label"] == metric), None)
