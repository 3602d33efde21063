"""Plain-text tables of results for the terminal: one run's ``results.json``, or several side by side."""

from __future__ import annotations

from typing import Any


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _aligned(row: list[str], widths: list[int]) -> str:
    """First column left-aligned (names), the others right-aligned (numbers)."""
    cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
    return "  ".join(cells)


def results_table(*runs: dict[str, Any]) -> str:
    """One row per evaluated model of each run: params, MACs, benign, each attack and the worst case
    (accuracy in %). With several runs, rows are named ``run/model`` and missing attacks show as '-'."""
    labels: list[str] = []
    for results in runs:
        labels += [a["label"] for a in results["attacks"] if a["label"] not in labels]
    header = ["model", "params (M)", "MACs (M)", "benign", *labels] + (["worst case"] if labels else [])
    rows = []
    for results in runs:
        for entry in [results, *results.get("other_models", [])]:
            scores = {a["label"]: _percent(a["accuracy"]) for a in entry["attacks"]}
            name = entry["model"] if len(runs) == 1 else f"{results['name']}/{entry['model']}"
            row = [
                name,
                f"{entry['params'] / 1e6:.3f}",
                f"{entry['macs'] / 1e6:.3f}",
                _percent(entry["benign"]["accuracy"]),
            ]
            row += [scores.get(label, "-") for label in labels]
            rows.append(row + ([_percent(entry["worst_case"]["accuracy"])] if labels else []))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    totals = sorted({results["benign"]["total"] for results in runs})
    title = runs[0]["name"] if len(runs) == 1 else ", ".join(results["name"] for results in runs)
    images = " / ".join(str(total) for total in totals)
    return "\n".join(
        [f"{title}: accuracy (%) on {images} test images", *(_aligned(r, widths) for r in [header, *rows])]
    )
