"""The pipeline end to end: run-folder contents, stages alone, skipping, conflicts, restarts, and
resuming after kill -9 with bit-identical results."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gkp.application.checkpoints.io import read_checkpoint
from gkp.application.config import build_experiment
from gkp.application.pipeline.run import run_experiment
from gkp.foundation.errors import ConfigError, DataError, PruningError, RunFolderError

from conftest import tiny_config, write_config

PIPELINE = tiny_config(
    deterministic=True,
    finetune={"epochs": 2, "eval_attacks": ["pgd"]},
    eval={"models": ["final", "dense", "best_pgd"]},
)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    run_experiment(build_experiment(PIPELINE), out=out)
    return out


def test_the_run_folder_holds_every_output(full_run):
    expected = {
        "config.yaml",
        "env.json",
        "metrics.csv",
        "tb",
        "state",
        "dense.ckpt",
        "train.json",
        "plan.json",
        "pruned.ckpt",
        "finetuned.ckpt",
        "best_benign.ckpt",
        "best_pgd.ckpt",
        "finetune.json",
        "results.json",
        "dense_best_benign.ckpt",
    }
    assert expected <= set(os.listdir(full_run))
    env = json.loads((full_run / "env.json").read_text())
    assert {"torch", "torchvision", "numpy", "git_commit", "device", "python"} <= set(env)
    rows = list(csv.DictReader((full_run / "metrics.csv").open()))
    assert [(r["stage"], r["epoch"]) for r in rows] == [
        ("train", "1"),
        ("train", "2"),
        ("train", "3"),
        ("finetune", "1"),
        ("finetune", "2"),
    ]
    assert rows[-1]["test_pgd"] and rows[-1]["test_benign"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(full_run / "tb" / "finetune"))


def test_plan_and_results_have_the_documented_format(full_run):
    plan = json.loads((full_run / "plan.json").read_text())
    assert plan["method"] == "l1" and plan["rate"] == 0.5 and len(plan["layers"]) == 3
    assert plan["layers"]["layer1.0.conv1"]["type"] == "filters" and len(plan["layers"]["layer1.0.conv1"]["kept"]) == 8
    assert plan["metadata"]["pruned"]["macs"] < plan["metadata"]["dense"]["macs"]
    results = json.loads((full_run / "results.json").read_text())
    assert [a["name"] for a in results["attacks"]] == ["fgsm", "pgd"]
    for entry in [results["benign"], *results["attacks"]]:
        assert {"correct", "total", "accuracy", "seconds"} <= set(entry) and entry["total"] == 128
    assert results["attacks"][1]["params"] == {
        "eps": 8 / 255,
        "norm": "linf",
        "step_size": 2 / 255,
        "steps": 3,
        "random_start": True,
        "restarts": 1,
        "space": "pixel",
        "labels": "true",
        "clip": True,
    }
    assert [m["model"] for m in results["other_models"]] == ["dense", "best_pgd"]
    assert results["params"] < results["other_models"][0]["params"]
    best = results["training"]["finetune"]["best"]
    assert best["pgd"]["checkpoint"] == "best_pgd.ckpt" and best["pgd"]["epoch"] in (1, 2)
    assert results["training"]["finetune"]["final"]["epoch"] == 2


def _counts(out: Path) -> list[int]:
    results = json.loads((out / "results.json").read_text())
    return [results["benign"]["correct"], *(a["correct"] for a in results["attacks"]), results["worst_case"]["correct"]]


def test_stages_run_alone_give_the_same_results(full_run, tmp_path):
    for stage in ("train", "prune", "finetune", "eval"):
        run_experiment(build_experiment(PIPELINE), out=tmp_path, stages=(stage,))
    staged, full = read_checkpoint(tmp_path / "finetuned.ckpt"), read_checkpoint(full_run / "finetuned.ckpt")
    assert all(torch.equal(staged["state_dict"][k], v) for k, v in full["state_dict"].items())
    assert _counts(tmp_path) == _counts(full_run)


def test_a_finished_run_is_skipped_not_recomputed(full_run):
    before = {name: (full_run / name).stat().st_mtime_ns for name in ("results.json", "dense.ckpt", "plan.json")}
    results = run_experiment(build_experiment(PIPELINE), out=full_run)
    assert results == json.loads((full_run / "results.json").read_text())
    assert before == {name: (full_run / name).stat().st_mtime_ns for name in before}


def test_a_different_config_in_the_same_folder_is_refused(full_run):
    before = (full_run / "results.json").read_text()
    changed = build_experiment({**PIPELINE, "prune": {"method": "l1", "rate": 0.625}})
    with pytest.raises(
        RunFolderError,
        match=r"stage\(s\) prune, finetune, eval computed from a different config "
        r"\(prune.rate: 0.5 -> 0.625\).*--out DIR.*--restart",
    ):
        run_experiment(changed, out=full_run)
    assert (full_run / "results.json").read_text() == before


def test_restart_moves_the_old_run_aside(tmp_path):
    exp = build_experiment(tiny_config(stages=["train"], train={"epochs": 1}))
    run_experiment(exp, out=tmp_path / "run")
    run_experiment(
        build_experiment(tiny_config(stages=["train"], train={"epochs": 2})), out=tmp_path / "run", restart=True
    )
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and (aside[0] / "dense.ckpt").is_file()
    assert read_checkpoint(tmp_path / "run" / "dense.ckpt")["metadata"]["final"]["epoch"] == 2


def test_missing_inputs_and_impossible_rates_fail_before_any_compute(tmp_path):
    with pytest.raises(RunFolderError, match=r"no 'dense' model in .*: run the train stage first"):
        run_experiment(build_experiment(tiny_config()), out=tmp_path / "a", stages=("prune",))
    with pytest.raises(RunFolderError, match=r"no 'pruned' model"):
        run_experiment(build_experiment(tiny_config()), out=tmp_path / "a", stages=("finetune",))
    with pytest.raises(PruningError, match="rate 0.95 would remove all"):
        run_experiment(build_experiment(tiny_config(prune={"method": "l1", "rate": 0.95})), out=tmp_path / "b")
    digits_for_three = tiny_config(model={"arch": "resnet8", "num_classes": 3}, data={"name": "digits"})
    with pytest.raises(ConfigError, match="model.num_classes: 3 classes, but data 'digits' has labels up to 9"):
        run_experiment(build_experiment(digits_for_three), out=tmp_path / "d")
    with pytest.raises(DataError, match="cifar10 was not found"):
        run_experiment(
            build_experiment(tiny_config(data={"name": "cifar10", "root": str(tmp_path)})), out=tmp_path / "c"
        )
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_selection_on_a_validation_split(tmp_path):
    exp = build_experiment(
        tiny_config(stages=["train"], data={"val_fraction": 0.25}, train={"epochs": 2, "select_on": "val"})
    )
    run_experiment(exp, out=tmp_path)
    summary = json.loads((tmp_path / "train.json").read_text())
    assert summary["select_on"] == "val" and set(summary["best"]) == {"benign"}
    assert "val_benign" in (tmp_path / "metrics.csv").read_text().splitlines()[0]


def _gkp(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gkp", *args], capture_output=True, text=True, timeout=timeout)


RESUME = tiny_config(
    stages=["train"],
    deterministic=True,
    seed=3,
    data={"image_size": 32, "train_size": 1024, "batch_size": 32},
    train={"epochs": 4, "eval_every": 1, "schedule": "step", "step_size": 2},
)


def _metrics_without_timings(out: Path) -> list[dict[str, str]]:
    rows = csv.DictReader((out / "metrics.csv").open())
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")} for row in rows]


def _state(out: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(out / "dense.ckpt")["state_dict"]


def test_kill_9_mid_epoch_then_resume_gives_bit_identical_results(tmp_path):
    config = write_config(tmp_path / "resume.yaml", RESUME)
    uninterrupted = _gkp("run", str(config), "--out", str(tmp_path / "straight"))
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    process = subprocess.Popen(
        [sys.executable, "-m", "gkp", "run", str(config), "--out", str(tmp_path / "killed")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    resume_file = tmp_path / "killed" / "state" / "train_last.ckpt"
    deadline = time.time() + 300
    while not resume_file.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the second epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted_at = read_checkpoint(resume_file)["metadata"]["epoch"]
    assert 1 <= interrupted_at < 4 and not (tmp_path / "killed" / "dense.ckpt").exists()

    resumed = _gkp("run", str(config), "--out", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {interrupted_at} of 4" in resumed.stderr
    straight, killed = _state(tmp_path / "straight"), _state(tmp_path / "killed")
    assert straight.keys() == killed.keys() and all(torch.equal(straight[k], killed[k]) for k in straight)
    assert (tmp_path / "straight" / "metrics.csv").read_text().count("\n") == 5
    assert _metrics_without_timings(tmp_path / "straight") == _metrics_without_timings(tmp_path / "killed")
