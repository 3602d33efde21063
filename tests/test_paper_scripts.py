"""scripts/paper/tableN.sh: one script per paper table, whose --dry-run lists exactly the table's cells.

Each script hands its table and sweep specs to scripts/paper/run_table.sh, which runs ``gkp sweep SPEC``
on each (``--dry-run``: only the status) and then ``gkp table ... --paper tableN``. The tests call the same
entry point (``gkp sweep SPEC --dry-run``) on each script's specs rather than the script itself, which
would first set up the environment (scripts/env.sh)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from gkp.application.cli import main
from gkp.application.reports.paper_tables import paper_rows, paper_tables
from gkp.application.sweep import load_sweep

from conftest import ROOT

SCRIPTS = ROOT / "scripts" / "paper"
TABLES = list(paper_tables())


def script_call(table: str) -> tuple[str, list[Path]]:
    """The table and sweep specs that scripts/paper/<table>.sh passes to run_table.sh."""
    text = (SCRIPTS / f"{table}.sh").read_text().replace("\\\n", " ")
    words = shlex.split(next(line for line in text.splitlines() if line.startswith("exec ")))
    start = next(i for i, word in enumerate(words) if word.endswith("/run_table.sh")) + 1
    end = words.index("--")
    assert words[end + 1 :] == ["$@"]
    return words[start], [ROOT / spec for spec in words[start + 1 : end]]


def paper_cells(table: dict, spec: Path) -> list[str]:
    """The methods of the table (or of the part whose runs this spec's folder holds), Unpruned aside: the
    dense model a cell evaluates."""
    folder = load_sweep(spec).out.name
    part = next((part for part, name in table.get("parts", {}).items() if name == folder), None)
    assert ("parts" in table) == (part is not None), f"{spec.name}: out folder {folder} is no part of the table"
    methods = [method for row_part, method, _, _ in paper_rows(table) if row_part == part and method != "Unpruned"]
    return list(dict.fromkeys(methods))


def test_every_table_has_a_script_and_the_shared_script_runs_the_sweeps_then_the_table():
    assert sorted(path.stem for path in SCRIPTS.glob("table*.sh")) == sorted(TABLES)
    shared = (SCRIPTS / "run_table.sh").read_text()
    assert 'gkp sweep "$spec" "$@"' in shared and 'gkp table "${finished[@]}" --paper "$table"' in shared


@pytest.mark.parametrize("table", TABLES)
def test_the_scripts_dry_run_lists_exactly_the_papers_cells(table, tmp_path, monkeypatch, capsys):
    name, specs = script_call(table)
    assert name == table and specs
    monkeypatch.chdir(tmp_path)  # the sweeps' run folders (runs/...) are relative: none exists here
    paper = paper_tables()[table]
    parts = set()
    for spec in specs:
        expected = paper_cells(paper, spec)
        sweep = load_sweep(spec)
        parts.add(sweep.out.name)
        assert sorted(cell.name for cell in sweep.cells) == sorted(expected)
        assert main(["sweep", str(spec), "--dry-run"]) == 0
        listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
        for cell in sweep.cells:
            assert "missing" in listed[cell.name] or "no such method yet" in listed[cell.name], listed[cell.name]
            if "zoo:" in str((cell.raw.get("model") or {}).get("checkpoint")):  # Table 3's torchvision cells
                assert listed[cell.name].endswith("from zoo:resnet50-torchvision"), listed[cell.name]
    assert len(parts) == len(specs) and (parts == set(paper["parts"].values()) if "parts" in paper else True)


def test_runs_that_several_tables_share_are_configured_alike():
    """Tables 2, 6 and 7 reuse Tables 9-11's runs (the same folders; the ablations share their dense
    models, named by the training's fingerprint): a cell that one folder holds must be the same run
    whichever spec names it."""
    seen: dict[Path, tuple[str, dict]] = {}
    for spec in sorted((ROOT / "configs" / "sweeps").glob("table*.yaml")):
        sweep = load_sweep(spec)
        for cell in sweep.cells:
            if cell.problem:
                continue
            first = seen.setdefault(cell.folder, (spec.name, cell.raw))
            assert first[1] == cell.raw, f"{cell.folder}: {first[0]} and {spec.name} configure it differently"
