"""Our results in the layout of a paper table, each number beside the paper's: ``gkp table RUN_DIR ...
--paper table10`` (Markdown, or CSV with ``--csv``).

``gkp/paper_tables.yaml`` holds the paper's tables as printed. A run supplies the rows of the method it
is named after (the sweep of ``scripts/paper/`` names each cell so): the row "BB" comes from its best
benign checkpoint, "(a)" from its best under FGSM 0.01, "(b)" under FGSM 0.1 ("(a)=(b)" and "BB=(b)" from
the first named), "-" from its main evaluated model (a training-time method's masked model), and the
"Unpruned" row from the dense model the SR-GKP run evaluates. Accuracies are in %, MACs and parameters in
millions in the SR-GKP authors' convention (non-zero weights).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import yaml

from gkp.errors import ConfigError

PAPER_TABLES = Path(__file__).with_name("paper_tables.yaml")
COLUMN_TITLES = {
    "benign": "Benign",
    "fgsm_0.01": "FGSM .01",
    "fgsm_0.1": "FGSM .1",
    "pgd_3": "PGD",
    "macs": "MACs (M)",
    "params": "Params (M)",
}
BEST_OF = {"BB": "benign", "(a)": "fgsm_0.01", "(b)": "fgsm_0.1"}


def paper_table(name: str) -> dict[str, Any]:
    tables = yaml.safe_load(PAPER_TABLES.read_text())
    if name not in tables:
        raise ConfigError(f"--paper: no table '{name}'; known: {', '.join(tables)}")
    return tables[name]


def _model_for(row: str, results: dict[str, Any]) -> str:
    """The evaluated model that supplies a paper row of this run."""
    if row == "-":
        return results["model"]
    criterion = BEST_OF[row.split("=")[0]]
    names = [entry["model"] for entry in [results, *results.get("other_models", [])]]
    return next((n for n in names if n.endswith(f"best_{criterion}")), f"best_{criterion}")


def _values(entry: dict[str, Any] | None, columns: list[str]) -> list[float | None]:
    if entry is None:
        return [None] * len(columns)
    accuracies = {"benign": entry["benign"]["accuracy"], **{a["label"]: a["accuracy"] for a in entry["attacks"]}}
    values = []
    for column in columns:
        if column == "macs":
            values.append(entry.get("authors_macs", entry["macs"]) / 1e6)
        elif column == "params":
            values.append(entry.get("nonzero_params", entry["params"]) / 1e6)
        else:
            values.append(100 * accuracies[column] if column in accuracies else None)
    return values


def _entry(results: dict[str, Any] | None, model: str) -> dict[str, Any] | None:
    if results is None:
        return None
    return next((e for e in [results, *results.get("other_models", [])] if e["model"] == model), None)


def table_rows(name: str, runs: list[dict[str, Any]]) -> list[tuple[str, str, list[float | None], list[float | None]]]:
    """(method, row, ours, paper's) for every row of the paper's table, ours None where no run supplies it."""
    table = paper_table(name)
    by_method = {results["name"]: results for results in runs}
    rows = []
    for method, row, *paper in table["rows"]:
        if method == "Unpruned":
            entry = _entry(by_method.get("SR-GKP"), "dense")
        else:
            results = by_method.get(method)
            entry = _entry(results, _model_for(row, results)) if results else None
        rows.append((method, row, _values(entry, table["columns"]), paper))
    return rows


def _cell(ours: float | None, paper: float | None) -> str:
    if ours is None:
        return "-" if paper is None else f"- / {paper:g}"
    if paper is None:
        return f"{ours:.2f}"
    return f"{ours:.2f} / {paper:g} ({ours - paper:+.2f})"


def table_markdown(name: str, runs: list[dict[str, Any]]) -> str:
    table = paper_table(name)
    header = ["Method", "Row", *(COLUMN_TITLES[c] for c in table["columns"])]
    lines = [
        f"{table['title']}: ours / paper (difference)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    for method, row, ours, paper in table_rows(name, runs):
        lines.append("| " + " | ".join([method, row, *map(_cell, ours, paper)]) + " |")
    return "\n".join(lines)


def table_csv(name: str, runs: list[dict[str, Any]]) -> str:
    columns = paper_table(name)["columns"]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["method", "row", *(f"{c}_{who}" for c in columns for who in ("ours", "paper"))])
    for method, row, ours, paper in table_rows(name, runs):
        writer.writerow([method, row, *(v for pair in zip(ours, paper, strict=True) for v in pair)])
    return buffer.getvalue()
