"""The gkp command: config checking, checkpoint info, errors as one line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gkp.application.cli import main
from gkp.application.config import load_experiment

from conftest import ROOT, tiny_config, write_config

SWEEPS = ROOT / "configs" / "sweeps"
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if SWEEPS not in p.parents)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_validates(config: Path):
    load_experiment(config)


@pytest.mark.parametrize("spec", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_resolves_every_cell(spec: Path):
    from gkp.application.sweep import load_sweep

    problems = [cell.problem for cell in load_sweep(spec).cells if cell.problem]
    assert all(problem.startswith("no such method yet") for problem in problems), problems


def test_check_prints_the_resolved_config(tmp_path, capsys):
    path = write_config(tmp_path / "x.yaml", tiny_config())
    assert main(["check", str(path), "--set", "prune.rate=0.625"]) == 0
    printed = capsys.readouterr().out
    assert "rate: 0.625" in printed and "step_size: 0.00784313725490196" in printed


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    path = write_config(tmp_path / "x.yaml", tiny_config(prune={"method": "l1", "rate": 2}))
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == "gkp: error: prune.rate: must be in (0, 1) (exclusive), got 2.0"


def test_info_describes_a_checkpoint(authors_checkpoint, capsys):
    assert main(["info", str(authors_checkpoint)]) == 0
    printed = capsys.readouterr().out
    assert "resnet20" in printed and "269,722" in printed and "40,551,040" in printed and "none (dense)" in printed


def test_run_prints_the_results_table(tmp_path, capsys):
    path = write_config(tmp_path / "x.yaml", tiny_config(train={"epochs": 1}, finetune={"epochs": 1}))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "tiny: accuracy (%) on 128 test images"
    assert lines[1].split() == ["model", "params", "(M)", "MACs", "(M)", "benign", "fgsm", "pgd", "worst", "case"]
    assert lines[2].startswith("final")
    details = lines[lines.index("final: attacks on 128 test images") :]
    assert details[1].split()[:5] == ["attack", "correct", "/", "total", "seconds"]
    fgsm = details[2].split()
    assert fgsm[0] == "fgsm" and fgsm[2] == "/" and fgsm[3] == "128" and "eps=0.0313725" in fgsm
    assert details[-1].startswith("worst case")
    # the evaluation's settings and accuracies for TensorBoard's HParams view
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(tmp_path / "run" / "tb" / "eval"))
    events.Reload()
    session = events.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(session).session_start_info.hparams
    assert hparams["method"].string_value == "l1" and hparams["rate"].number_value == 0.5
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert events.Scalars("final/benign")[0].value == pytest.approx(results["benign"]["accuracy"])
    assert {"final/fgsm", "final/pgd", "final/worst_case", "final/macs"} <= set(events.Tags()["scalars"])


def test_security_curves_from_minimum_norm_runs(tmp_path, capsys):
    import csv

    import numpy as np

    config = tiny_config(
        stages=["train", "eval"],
        train={"epochs": 2},
        attacks=[{"name": "fmn", "steps": 20, "label": "fmn"}],
        eval={"models": ["final", "dense"]},
    )
    runs = []
    for seed in (0, 1):
        path = write_config(tmp_path / f"fmn{seed}.yaml", {**config, "name": f"fmn{seed}", "seed": seed})
        assert main(["run", str(path), "--out", str(tmp_path / f"run{seed}")]) == 0
        runs.append(str(tmp_path / f"run{seed}"))
    out = tmp_path / "curves"
    assert main(["curves", *runs, "--attack", "fmn", "--out", str(out)]) == 0
    rows = list(csv.reader(open(f"{out}.csv")))
    assert rows[0] == ["eps", "fmn0", "fmn1"] and len(rows) == 102
    benign = np.load(tmp_path / "run0" / "per_sample_final.npz")["benign"].mean()
    assert float(rows[1][0]) == 0 and float(rows[1][1]) == pytest.approx(benign, abs=1e-6)
    assert float(rows[-1][1]) <= float(rows[1][1]) and (tmp_path / "curves.png").stat().st_size > 1000
    assert main(["curves", f"{runs[0]}:final", f"{runs[0]}:dense", "--attack", "fmn", "--out", str(out)]) == 0
    rows = list(csv.reader(open(f"{out}.csv")))
    assert rows[0] == ["eps", "fmn0/final", "fmn0/dense"]
    dense = np.load(tmp_path / "run0" / "per_sample_dense.npz")["benign"].mean()
    assert float(rows[1][2]) == pytest.approx(dense, abs=1e-6)
    assert main(["curves", runs[0], "--attack", "pgd", "--out", str(out)]) == 2
    assert "no norms for attack 'pgd'; minimum-norm attacks there: fmn" in capsys.readouterr().err
