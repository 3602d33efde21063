"""Plain-text tables of results for the terminal."""

from __future__ import annotations

from typing import Any


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _aligned(row: list[str], widths: list[int]) -> str:
    """First column left-aligned (names), the others right-aligned (numbers)."""
    cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
    return "  ".join(cells)


def results_table(results: dict[str, Any]) -> str:
    """One row per evaluated model: params, MACs, benign, each attack and the worst case (accuracy in %)."""
    entries = [results, *results.get("other_models", [])]
    labels = [a["label"] for a in results["attacks"]]
    header = ["model", "params (M)", "MACs (M)", "benign", *labels]
    if labels:
        header.append("worst case")
    rows = []
    for entry in entries:
        row = [
            entry["model"],
            f"{entry['params'] / 1e6:.3f}",
            f"{entry['macs'] / 1e6:.3f}",
            _percent(entry["benign"]["accuracy"]),
            *(_percent(a["accuracy"]) for a in entry["attacks"]),
        ]
        if labels:
            row.append(_percent(entry["worst_case"]["accuracy"]))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [_aligned(r, widths) for r in [header, *rows]]
    total = results["benign"]["total"]
    return "\n".join([f"{results['name']}: accuracy (%) on {total} test images", *lines])
