"""Our results in the layout of a paper table, each number beside the paper's: ``gkp table RUN_DIR ...
--paper table10`` (Markdown, or CSV with ``--csv``).

``paper_tables.yaml`` (beside this file) holds the paper's Tables 2-7 and 9-19 as printed. A run supplies the
rows of the method it is named after (the sweeps of ``scripts/paper/`` name each cell so): the row "BB" comes from its
best benign checkpoint, "(a)", "(b)", ... from its best on the table's first, second, ... attack column
(FGSM 0.01 and 0.1 on CIFAR-10; FGSM 0.001, 0.01, 0.1 and PGD in Table 13), a merged row ("(a)=(b)",
"BB=(b)", "(a)&(b)") from the first it names, "-" from its main evaluated model (a training-time method's
masked model), and the "Unpruned" row from the dense model that the table's SR-GKP run (``unpruned_from``)
evaluates. In a table with parts (one block per model, or Table 3's two baselines) a run belongs to the
part whose folder holds it: ``runs/table13/resnet56/SR-GKP`` is SR-GKP in Table 13's ResNet-56 part.
Accuracies are in %, MACs and parameters in millions in the SR-GKP authors' convention (non-zero weights).
Table 7's total is the method's selection time that the prune stage records (``plan.json``); the grouping
step is not timed on its own, so its column has the paper's numbers only.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from gkp.foundation.errors import ConfigError

PAPER_TABLES = Path(__file__).with_name("paper_tables.yaml")
COLUMN_TITLES = {
    "benign": "Benign",
    "fgsm_0.001": "FGSM .001",
    "fgsm_0.01": "FGSM .01",
    "fgsm_0.1": "FGSM .1",
    "pgd_3": "PGD",
    "macs": "MACs (M)",
    "params": "Params (M)",
    "grouping_seconds": "Grouping (s)",
    "total_seconds": "Total (s)",
}
NOT_ACCURACY = {"benign", "macs", "params", "grouping_seconds", "total_seconds"}


@dataclass(frozen=True)
class Run:
    """A finished run as a table reads it: its ``results.json`` and the folder that holds it."""

    folder: Path
    results: dict[str, Any]

    @property
    def name(self) -> str:
        return self.results["name"]

    @property
    def part(self) -> str:
        """The folder the run's folder is in, which names its part of a table with parts."""
        return self.folder.resolve().parent.name

    def select_seconds(self) -> float | None:
        """Seconds the one-shot selection took in the prune stage (``plan.json``), if recorded."""
        plan = self.folder / "plan.json"
        if not plan.is_file():
            return None
        return json.loads(plan.read_text()).get("metadata", {}).get("select_seconds")


@dataclass(frozen=True)
class TableRow:
    part: str | None
    method: str
    row: str
    ours: list[float | None]
    paper: list[float | None]


@cache
def paper_tables() -> dict[str, dict[str, Any]]:
    """The data file, read once (about 0.1 s of YAML parsing); callers do not modify it."""
    return yaml.safe_load(PAPER_TABLES.read_text())


def paper_table(name: str) -> dict[str, Any]:
    tables = paper_tables()
    if name not in tables:
        raise ConfigError(f"--paper: no table '{name}'; known: {', '.join(tables)}")
    return tables[name]


def paper_rows(table: dict[str, Any]) -> list[tuple[str | None, str, str, list[float | None]]]:
    """(part, method, row, the paper's values) of each row; part None in a table without parts."""
    if "parts" in table:
        return [(part, method, row, values) for part, method, row, *values in table["rows"]]
    return [(None, method, row, values) for method, row, *values in table["rows"]]


def criteria(columns: list[str]) -> dict[str, str]:
    """The metric each checkpoint label selects on: "BB" benign, "(a)", "(b)", ... the attack columns in
    their order."""
    attacks = [column for column in columns if column not in NOT_ACCURACY]
    return {"BB": "benign", **{f"({chr(ord('a') + i)})": label for i, label in enumerate(attacks)}}


def _entries(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [results, *results.get("other_models", [])]


def _entry_for(row: str, results: dict[str, Any], columns: list[str]) -> dict[str, Any] | None:
    """The evaluated model of this run that supplies a paper row: its main one for "-", else the best
    checkpoint on the row's (first) criterion, fine-tuning's or a training-time method's."""
    entries = {entry["model"]: entry for entry in _entries(results)}
    if row == "-":
        return entries[results["model"]]
    criterion = criteria(columns)[row.replace("&", "=").split("=")[0]]
    return entries.get(f"best_{criterion}") or entries.get(f"pruning_best_{criterion}")


def _values(entry: dict[str, Any] | None, run: Run | None, columns: list[str]) -> list[float | None]:
    if entry is None or run is None:
        return [None] * len(columns)
    accuracies = {"benign": entry["benign"]["accuracy"], **{a["label"]: a["accuracy"] for a in entry["attacks"]}}
    values = []
    for column in columns:
        if column == "macs":
            values.append(entry.get("method_macs", entry.get("authors_macs", entry["macs"])) / 1e6)
        elif column == "params":
            values.append(entry.get("nonzero_params", entry["params"]) / 1e6)
        elif column == "total_seconds":
            values.append(run.select_seconds())
        elif column == "grouping_seconds":
            values.append(None)  # no stage times the grouping on its own
        else:
            values.append(100 * accuracies[column] if column in accuracies else None)
    return values


def _runs_by_row(table: dict[str, Any], name: str, runs: list[Run]) -> dict[tuple[str | None, str], Run]:
    """Each (part, method) of the table and the run that supplies it."""
    folders = table.get("parts", {})
    parts_of = {folder: part for part, folder in folders.items()}
    methods = {method for _, method, _, _ in paper_rows(table)}
    found: dict[tuple[str | None, str], Run] = {}
    for run in runs:
        part = parts_of.get(run.part) if folders else None
        if run.name not in methods or (folders and part is None):
            continue
        if (part, run.name) in found:
            raise ConfigError(
                f"gkp table: {found[part, run.name].folder} and {run.folder} both supply {run.name} to {name}; "
                "give one of them"
            )
        found[part, run.name] = run
    if runs and not found:
        where = f" in folders named {', '.join(folders.values())}" if folders else ""
        raise ConfigError(
            f"gkp table: none of the runs ({', '.join(sorted({r.name for r in runs}))}) is a method of {name}{where}; "
            "name each run after its row's method, as scripts/paper/ does"
        )
    return found


def table_rows(name: str, runs: list[Run]) -> list[TableRow]:
    """Every row of the paper's table with ours (None where no run supplies it) beside the paper's."""
    table = paper_table(name)
    columns = table["columns"]
    by_row = _runs_by_row(table, name, runs)
    rows = []
    for part, method, row, paper in paper_rows(table):
        if method == "Unpruned":
            run = by_row.get((part, table.get("unpruned_from", "SR-GKP")))
            entry = next((e for e in _entries(run.results) if e["model"] == "dense"), None) if run else None
        else:
            run = by_row.get((part, method))
            entry = _entry_for(row, run.results, columns) if run else None
        rows.append(TableRow(part, method, row, _values(entry, run, columns), paper))
    return rows


def _cell(ours: float | None, paper: float | None) -> str:
    if ours is None:
        return "-" if paper is None else f"- / {paper:g}"
    if paper is None:
        return f"{ours:.2f}"
    return f"{ours:.2f} / {paper:g} ({ours - paper:+.2f})"


def table_markdown(name: str, runs: list[Run]) -> str:
    table = paper_table(name)
    lead = [table["part"]] if "parts" in table else []
    header = [*lead, "Method", "Row", *(COLUMN_TITLES[c] for c in table["columns"])]
    lines = [
        f"{table['title']}: ours / paper (difference)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + " --- |" * len(header),
    ]
    for row in table_rows(name, runs):
        cells = [*([row.part] if lead else []), row.method, row.row, *map(_cell, row.ours, row.paper)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_csv(name: str, runs: list[Run]) -> str:
    table = paper_table(name)
    lead = [table["part"].lower()] if "parts" in table else []
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*lead, "method", "row", *(f"{c}_{who}" for c in table["columns"] for who in ("ours", "paper"))])
    for row in table_rows(name, runs):
        pairs = (value for pair in zip(row.ours, row.paper, strict=True) for value in pair)
        writer.writerow([*([row.part] if lead else []), row.method, row.row, *pairs])
    return buffer.getvalue()
