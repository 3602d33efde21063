"""Sweeps: a grid of overrides over one config, cells sharing one dense model trained once, rerun to
continue, and a dry run that says where each run stands."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gkp.cli import main
from gkp.sweep import load_sweep, run_status

from conftest import tiny_config, write_config


def spec(tmp_path: Path, grid: dict, cells: list | None = None, base: dict | None = None) -> Path:
    write_config(tmp_path / "base.yaml", base or tiny_config(train={"epochs": 1}, finetune={"epochs": 1}, attacks=[]))
    document = {"name": "grid", "base": "base.yaml", "out": str(tmp_path / "out"), "grid": grid}
    if cells:
        document["cells"] = cells
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_cells_share_one_dense_model_and_the_dry_run_says_where_each_stands(tmp_path, capsys):
    path = spec(
        tmp_path, {"prune.method": ["l1", "srgkp"]}, cells=[{"prune.method": "tmigkp"}, {"prune.method": "gal"}]
    )
    sweep = load_sweep(path)
    assert [c.name for c in sweep.cells] == ["method-l1", "method-srgkp", "method-tmigkp", "method-gal"]
    assert len(sweep.dense_runs) == 1 and sweep.cells[0].dense == sweep.cells[1].dense
    assert sweep.cells[2].dense is None  # TMI-GKP reads training snapshots: it trains its own model
    assert sweep.cells[3].problem == "no such method yet: gal"
    assert main(["sweep", str(path), "--dry-run"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["method-gal"][:2] == ["cannot", "run"] and rows["method-l1"][0] == "missing"


@pytest.mark.slow
def test_a_sweep_runs_its_dense_model_once_and_a_rerun_runs_nothing_again(tmp_path):
    from gkp.sweep import run_sweep

    sweep = load_sweep(spec(tmp_path, {"prune.method": ["l1", "srgkp"]}))
    assert run_sweep(sweep) == []
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if (p / "state").is_dir()) == sorted(
        [next(iter(sweep.dense_runs)).name, "method-l1", "method-srgkp"]
    )
    assert all(run_status(cell.folder, cell.raw["stages"]) == "done" for cell in sweep.cells)
    results = [json.loads((cell.folder / "results.json").read_text()) for cell in sweep.cells]
    assert [r["method"] for r in results] == ["l1", "srgkp"]
    assert not (out / "method-l1" / "dense.ckpt").exists()  # it read the shared one
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}
    assert run_sweep(sweep) == [] and before == {p: p.stat().st_mtime_ns for p in out.rglob("*.ckpt")}


@pytest.mark.slow
def test_the_digits_quick_start_as_a_sweep_resumes_a_killed_cell(tmp_path):
    """2 methods x 2 rates of the quick start: one dense model; a cell killed mid-epoch finishes on rerun
    and nothing else runs again."""
    root = Path(__file__).resolve().parents[1]
    base = yaml.safe_load((root / "configs" / "quickstart.yaml").read_text())
    path = spec(tmp_path, {"prune.method": ["l1", "srgkp"], "prune.rate": [0.4375, 0.625]}, base=base)
    sweep = load_sweep(path)
    assert len(sweep.dense_runs) == 1 and len(sweep.cells) == 4
    command = [sys.executable, "-m", "gkp.cli", "sweep", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    target = sweep.cells[1].folder / "state" / "finetune_last.ckpt"
    deadline = time.time() + 1200
    while not target.exists() and time.time() < deadline:
        time.sleep(0.2)
    import os

    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    statuses = [run_status(c.folder, c.raw["stages"]) for c in sweep.cells]
    assert statuses[0] == "done" and statuses[1] == "partial" and statuses[2:] == ["missing", "missing"]
    finished_before = {p: p.stat().st_mtime_ns for p in sweep.cells[0].folder.rglob("*.ckpt")}
    assert subprocess.run(command, capture_output=True, timeout=1800).returncode == 0
    assert all(run_status(c.folder, c.raw["stages"]) == "done" for c in sweep.cells)
    assert finished_before == {p: p.stat().st_mtime_ns for p in sweep.cells[0].folder.rglob("*.ckpt")}


def test_the_dry_run_counts_the_epochs_left_and_times_them_from_the_measured_ones(tmp_path):
    from gkp.sweep import epochs_left, status_table

    path = spec(tmp_path, {"prune.method": ["l1"]}, base=tiny_config(train={"epochs": 3}, finetune={"epochs": 2}))
    sweep = load_sweep(path)
    dense = next(iter(sweep.dense_runs))
    dense.mkdir(parents=True)
    (dense / "metrics.csv").write_text("stage,epoch,seconds\ntrain,1,3600\n")
    assert epochs_left(dense, sweep.dense_runs[dense]) == (2, 3600.0)
    cell = sweep.cells[0]
    assert epochs_left(cell.folder, cell.raw) == (2, None)  # its fine-tuning; no epoch of it measured yet
    table = status_table(sweep)
    assert "2 epochs, ~2.0 h" in table and "about 2.0 h of training left" in table and "plus 1 run(s)" in table


def test_the_table10_script_lists_exactly_the_papers_rows():
    """Table 10 of ../shared/specs/paper.md: every method row, the missing methods listed as such, one
    dense model shared by the cells that train it the same way (TMI-GKP reads snapshots, SFP trains from
    scratch)."""
    root = Path(__file__).resolve().parents[1]
    assert "configs/sweeps/table10.yaml" in (root / "scripts" / "paper" / "table10.sh").read_text()
    sweep = load_sweep(root / "configs" / "sweeps" / "table10.yaml")
    paper = ["SR-GKP", "TMI-GKP", "FPGM", "SFP", "RAP-ADMM", "HRank", "L1Norm-A", "L1Norm-B", "CC", "DHP", "GAL"]
    assert [cell.name for cell in sweep.cells] == [*paper, "LRF", "NPPM"]
    missing = {cell.name for cell in sweep.cells if cell.problem}
    assert missing == {"CC", "DHP", "GAL", "LRF", "NPPM"}
    assert len(sweep.dense_runs) == 1
    own = {cell.name for cell in sweep.cells if not cell.problem and cell.dense is None}
    assert own == {"TMI-GKP", "SFP"}
    assert "dense" in build_experiment_of(sweep, "SR-GKP").eval.models  # the Unpruned row


def build_experiment_of(sweep, name):
    from gkp.config import build_experiment

    return build_experiment(next(cell for cell in sweep.cells if cell.name == name).raw)
