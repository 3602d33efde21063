"""Plain-text tables of results for the terminal: one run's ``results.json``, or several side by side, and
the attacks of one run in detail."""

from __future__ import annotations

from typing import Any


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _aligned(row: list[str], widths: list[int]) -> str:
    """First column left-aligned (names), the others right-aligned (numbers)."""
    cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
    return "  ".join(cells)


def _has_zeroed_weights(entry: dict[str, Any]) -> bool:
    return entry.get("nonzero_params", entry["params"]) < entry["params"]


def _millions(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.3f}"


def results_table(*runs: dict[str, Any]) -> str:
    """One row per evaluated model of each run: params, MACs, benign, each attack and the worst case
    (accuracy in %). With several runs, rows are named ``run/model`` and missing attacks show as '-'.
    When a model has filters zeroed in place (a training-time method's masked model), a column gives the
    SR-GKP authors' MACs, which count only non-zero weights."""
    labels: list[str] = []
    for results in runs:
        labels += [a["label"] for a in results["attacks"] if a["label"] not in labels]
    entries = [(results, entry) for results in runs for entry in [results, *results.get("other_models", [])]]
    authors = any(_has_zeroed_weights(entry) for _, entry in entries)
    header = ["model", "params (M)", "MACs (M)", *(["authors' MACs (M)"] if authors else []), "benign", *labels]
    header += ["worst case"] if labels else []
    rows = []
    for results, entry in entries:
        scores = {a["label"]: _percent(a["accuracy"]) for a in entry["attacks"]}
        name = entry["model"] if len(runs) == 1 else f"{results['name']}/{entry['model']}"
        row = [name, _millions(entry["params"]), _millions(entry["macs"])]
        row += [_millions(entry.get("authors_macs"))] if authors else []
        row += [_percent(entry["benign"]["accuracy"]), *(scores.get(label, "-") for label in labels)]
        rows.append(row + ([_percent(entry["worst_case"]["accuracy"])] if labels else []))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    totals = sorted({results["benign"]["total"] for results in runs})
    title = runs[0]["name"] if len(runs) == 1 else ", ".join(results["name"] for results in runs)
    images = " / ".join(str(total) for total in totals)
    return "\n".join(
        [f"{title}: accuracy (%) on {images} test images", *(_aligned(r, widths) for r in [header, *rows])]
    )


def _setting(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def attacks_table(results: dict[str, Any]) -> str:
    """The attacks of one run's first evaluated model: correct / total, wall time and resolved parameters."""
    header = ["attack", "correct / total", "seconds", "parameters"]
    scored = [*results["attacks"], {"label": "worst case", "params": {}, **results["worst_case"]}]
    rows = [
        [
            entry["label"],
            f"{entry['correct']} / {entry['total']}",
            f"{entry['seconds']:.1f}",
            " ".join(f"{key}={_setting(value)}" for key, value in entry["params"].items()),
        ]
        for entry in scored
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [(_aligned(r[:3], widths[:3]) + "  " + r[3]).rstrip() for r in [header, *rows]]
    return "\n".join([f"{results['model']}: attacks on {results['benign']['total']} test images", *lines])
