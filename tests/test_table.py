"""gkp table: the paper's numbers as transcribed (checked against the spec), and our runs in its layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gkp.application.cli import main
from gkp.application.reports.paper_tables import Run, criteria, paper_rows, paper_tables, table_rows
from gkp.foundation.errors import ConfigError

from paper_spec import paper_tables as spec_tables


def test_the_data_file_holds_every_number_of_the_papers_tables_as_the_spec_prints_them(shared):
    printed = spec_tables(shared / "specs" / "paper.md")
    ours = paper_tables()
    assert list(ours) == [f"table{n}" for n in (2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19)]
    for name, table in ours.items():
        assert table["rows"] == printed[name], name


@pytest.mark.parametrize("name", list(paper_tables()))
def test_every_table_is_well_formed(name):
    table = paper_tables()[name]
    methods = {method for _, method, _, _ in paper_rows(table)}
    labels = set(criteria(table["columns"]))
    for part, _, row, values in paper_rows(table):
        assert len(values) == len(table["columns"]) and (part in table.get("parts", {None: None}))
        assert row == "-" or {label for label in row.replace("&", "=").split("=")} <= labels
    if "Unpruned" in methods:
        assert table.get("unpruned_from", "SR-GKP") in methods


def entry(model: str, benign: float, attacks: dict[str, float], macs: float = 71.855e6) -> dict:
    scored = [{"label": label, "accuracy": value} for label, value in attacks.items()]
    return {"model": model, "benign": {"accuracy": benign}, "attacks": scored, "macs": macs, "params": 482_000}


def write_run(folder: Path, results: dict, plan: dict | None = None) -> Run:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    if plan is not None:
        (folder / "plan.json").write_text(json.dumps(plan))
    return Run(folder, results)


ATTACKS = {"fgsm_0.01": 0.76, "fgsm_0.1": 0.45, "pgd_3": 0.44}


def test_runs_fill_the_papers_layout_row_by_row(tmp_path, capsys):
    srgkp = {
        "name": "SR-GKP",
        **entry("final", 0.93, ATTACKS),
        "other_models": [
            entry("best_benign", 0.9408, ATTACKS),
            entry("best_fgsm_0.01", 0.9383, {**ATTACKS, "fgsm_0.01": 0.7640}),
            entry("dense", 0.9324, ATTACKS, macs=126.561e6),
        ],
    }
    rap = {"name": "RAP-ADMM", **entry("masked", 0.7837, ATTACKS, macs=71.661e6), "other_models": []}
    runs = [write_run(tmp_path / results["name"], results) for results in (srgkp, rap)]
    rows = {(row.method, row.row): row.ours for row in table_rows("table10", runs)}
    assert rows[("SR-GKP", "BB")][0] == pytest.approx(94.08) and rows[("SR-GKP", "(a)=(b)")][1] == pytest.approx(76.40)
    assert rows[("Unpruned", "-")][0] == pytest.approx(93.24) and rows[("Unpruned", "-")][4] == pytest.approx(126.561)
    assert rows[("RAP-ADMM", "-")][0] == pytest.approx(78.37) and rows[("CC", "BB")] == [None] * 6
    assert main(["table", str(tmp_path / "SR-GKP"), str(tmp_path / "RAP-ADMM"), "--paper", "table10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| Method | Row | Benign | FGSM .01 | FGSM .1 | PGD | MACs (M) | Params (M) |"
    assert len(lines) == 4 + len(paper_tables()["table10"]["rows"])
    srgkp_bb = next(line for line in lines if line.startswith("| SR-GKP | BB |"))
    assert "94.08 / 94.08 (+0.00)" in srgkp_bb and "| CC | BB | - / 94.04 |" in "\n".join(lines)
    assert main(["table", str(tmp_path / "SR-GKP"), "--paper", "table10", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("method,row,benign_ours,benign_paper")


IMAGENET = {"fgsm_0.001": 0.66, "fgsm_0.01": 0.47, "fgsm_0.1": 0.09, "pgd_3": 0.37}


def test_a_table_with_parts_and_the_imagenet_attacks_takes_each_part_from_its_folder(tmp_path, capsys):
    """Table 13: ResNet-56 and ResNet-101 blocks, (a)-(d) the four attack columns, each run in its part's
    folder (runs/table13/<part>/<method>)."""
    r101 = {
        "name": "SR-GKP",
        **entry("final", 0.60, IMAGENET, macs=5897e6),
        "other_models": [
            entry("best_benign", 0.6721, IMAGENET, macs=5897e6),
            entry("best_fgsm_0.001", 0.6569, {**IMAGENET, "fgsm_0.001": 0.6491}),
            entry("best_fgsm_0.01", 0.6561, {**IMAGENET, "fgsm_0.01": 0.3827}),
            entry("best_fgsm_0.1", 0.6569, {**IMAGENET, "fgsm_0.1": 0.1096}),
            entry("dense", 0.6551, IMAGENET, macs=10081.092e6),
        ],
    }
    r56_tmi = {"name": "TMI-GKP", **entry("final", 0.5, IMAGENET)}
    r56_tmi["other_models"] = [entry("best_benign", 0.5148, IMAGENET)]
    runs = [write_run(tmp_path / "resnet101" / "SR-GKP", r101), write_run(tmp_path / "resnet56" / "TMI-GKP", r56_tmi)]
    rows = {(row.part, row.method, row.row): row.ours for row in table_rows("table13", runs)}
    assert rows[("ResNet-101", "SR-GKP", "(a)")][1] == pytest.approx(64.91)
    assert rows[("ResNet-101", "SR-GKP", "(c)")][3] == pytest.approx(10.96)
    assert rows[("ResNet-101", "Unpruned", "-")][5] == pytest.approx(10081.092)
    assert rows[("ResNet-56", "TMI-GKP", "BB")][0] == pytest.approx(51.48)
    assert rows[("ResNet-56", "SR-GKP", "BB")] == [None] * 7  # the ResNet-101 run is not ResNet-56's
    assert main(["table", *(str(run.folder) for run in runs), "--paper", "table13"]) == 0
    lines = capsys.readouterr().out.splitlines()
    columns = "Benign | FGSM .001 | FGSM .01 | FGSM .1 | PGD | MACs (M) | Params (M)"
    assert lines[2] == f"| Model | Method | Row | {columns} |"
    assert "| ResNet-101 | SR-GKP | (b) | 65.61 / 65.61 (+0.00) | 66.00 / 64.71 (+1.29) |" in "\n".join(lines)
    assert main(["table", str(runs[0].folder), "--paper", "table13", "--csv"]) == 0
    assert capsys.readouterr().out.startswith("model,method,row,benign_ours")


def test_an_ablation_table_names_its_rows_after_the_runs_and_table7_reads_the_prune_time(tmp_path):
    beam = {
        "name": "Snaking-SmoothBeamGreedy",
        **entry("final", 0.93, ATTACKS),
        "other_models": [entry("best_benign", 0.9302, ATTACKS), entry("dense", 0.928, ATTACKS)],
    }
    greedy = {"name": "Snaking-Greedy", **entry("final", 0.92, ATTACKS)}
    greedy["other_models"] = [entry("best_benign", 0.9277, ATTACKS)]
    runs = [write_run(tmp_path / "table9" / results["name"], results) for results in (beam, greedy)]
    rows = {(row.method, row.row): row.ours for row in table_rows("table4", runs)}
    assert rows[("Unpruned", "-")] == [pytest.approx(92.80), pytest.approx(76.0), pytest.approx(45.0)]
    assert rows[("Snaking-Greedy", "BB=(a)")][0] == pytest.approx(92.77)
    assert rows[("Snaking-SmoothBeamGreedy", "BB")][0] == pytest.approx(93.02)
    plan = {"metadata": {"select_seconds": 12.0}}
    srgkp = write_run(tmp_path / "table10" / "SR-GKP", {**beam, "name": "SR-GKP"}, plan)
    timing = {(row.part, row.method): (row.ours, row.paper) for row in table_rows("table7", [srgkp])}
    assert timing[("ResNet-56", "SR-GKP")] == ([None, 12.0], [5, 1243])  # grouping is not timed on its own
    assert timing[("ResNet-32", "SR-GKP")] == ([None, None], [3, 696])


def test_runs_that_no_row_reads_or_that_collide_are_refused(tmp_path):
    run = write_run(tmp_path / "a" / "fpgm_resnet56", {"name": "fpgm_resnet56", **entry("final", 0.9, ATTACKS)})
    with pytest.raises(ConfigError, match="none of the runs \\(fpgm_resnet56\\) is a method of table10"):
        table_rows("table10", [run])
    with pytest.raises(ConfigError, match="in folders named resnet56, resnet101"):
        table_rows("table13", [write_run(tmp_path / "b" / "SR-GKP", {"name": "SR-GKP", **entry("final", 0.5, {})})])
    twice = [write_run(tmp_path / d / "SFP", {"name": "SFP", **entry("masked", 0.9, ATTACKS)}) for d in ("c", "d")]
    with pytest.raises(ConfigError, match="both supply SFP to table10"):
        table_rows("table10", twice)
    with pytest.raises(ConfigError, match="no table 'table8'"):
        table_rows("table8", [])


@pytest.mark.slow
def test_finished_digits_runs_fill_table5_and_table7(tmp_path, capsys):
    """A real sweep on scikit-learn's digits (ResNet-8, a few epochs, the paper's CIFAR attacks): its cells,
    named after Table 5's rows and Table 7's SR-GKP in a folder named after Table 10 (as Table 5's and 7's
    specs put them), fill those rows from their results.json and plan.json."""
    import yaml

    from gkp.application.sweep import load_sweep, run_sweep

    base = {
        "name": "digits",
        "device": "cpu",
        "model": {"arch": "resnet8"},
        "data": {"name": "digits", "batch_size": 64},
        "train": {"epochs": 4, "lr": 0.05, "schedule": "cosine", "eval_every": 0},
        "prune": {"method": "srgkp", "rate": 0.4375},
        "finetune": {"epochs": 3, "lr": 0.01, "schedule": "cosine", "eval_attacks": ["fgsm_0.01", "fgsm_0.1", "pgd_3"]},
        "attacks": [{"suite": "paper-cifar"}],
        "eval": {"models": ["final", "best_benign", "best_fgsm_0.01", "best_fgsm_0.1", "dense"]},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    cells = [
        {"name": "Snaking-SmoothBeamGreedy"},
        {"name": "Snaking-Greedy", "prune": {"method": "gkp_greedy", "rate": 0.4375}},
        {"name": "SR-GKP"},
    ]
    spec = {"name": "digits", "base": "base.yaml", "out": str(tmp_path / "table10"), "cells": cells}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    sweep = load_sweep(tmp_path / "sweep.yaml")
    assert run_sweep(sweep) == []
    folders = [str(cell.folder) for cell in sweep.cells]
    assert main(["table", *folders, "--paper", "table5"]) == 0
    table5 = capsys.readouterr().out
    print(table5)
    results = json.loads((sweep.cells[1].folder / "results.json").read_text())
    best = next(e for e in results["other_models"] if e["model"] == "best_fgsm_0.01")
    ours = f"{100 * best['attacks'][0]['accuracy']:.2f} / 76.05"
    assert f"| Snaking-Greedy | (a) | {100 * best['benign']['accuracy']:.2f} / 93.4 " in table5 and ours in table5
    assert "| Unpruned | - | " in table5 and "| Unpruned | - | - /" not in table5
    assert "| TMI-Greedy | BB | - / 93.95 | - / 75.18 | - / 42.18 |" in table5
    assert main(["table", *folders, "--paper", "table7"]) == 0
    table7 = capsys.readouterr().out
    seconds = json.loads((sweep.cells[2].folder / "plan.json").read_text())["metadata"]["select_seconds"]
    assert f"| ResNet-56 | SR-GKP | - | - / 5 | {seconds:.2f} / 1243 (" in table7
