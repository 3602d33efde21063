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

from gkp.errors import RunFolderError


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
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
