"""What keeps a run folder's results right: one process at a time in a folder (an OS lock that dies with the
process), the content of the data in every fingerprint, a sweep whose runs die with it, and folders and
files that are not ours left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gkp.application.cli import main
from gkp.application.config import build_experiment
from gkp.application.pipeline.run import run_experiment
from gkp.application.pipeline.rundir import LOCK, RunDir
from gkp.application.sweep import run_status
from gkp.foundation.errors import RunFolderError

from conftest import tiny_config, write_config

ROOT = Path(__file__).resolve().parents[1]


def gkp(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gkp", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


SLOW = {"train": {"epochs": 30, "eval_every": 0}, "data": {"train_size": 2048}}  # about 20 s alone


def test_a_second_command_on_a_held_run_folder_is_refused_and_a_killed_holder_frees_it(tmp_path):
    config = write_config(tmp_path / "tiny.yaml", tiny_config(stages=["train"], **SLOW))
    folder = tmp_path / "run"
    first = gkp("run", str(config), "--out", str(folder))
    wait_for(lambda: RunDir(folder).holder() is not None)
    assert f"process {first.pid}" in RunDir(folder).holder() and run_status(folder, ["train"]) == "running"
    second = subprocess.run(
        [sys.executable, "-m", "gkp", "run", str(config), "--out", str(folder), "--set", "train.lr=0.5"],
        capture_output=True,
        text=True,
    )
    assert second.returncode == 2 and second.stderr.count("\n") == 1
    assert f"is in use by process {first.pid}" in second.stderr and "--out DIR" in second.stderr
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert RunDir(folder).holder() is None  # the lock died with its process
    assert main(["run", str(config), "--out", str(folder), "--set", "train.epochs=1"]) == 2  # a changed config
    assert main(["run", str(config), "--out", str(folder), "--restart", "--set", "train.epochs=1"]) == 0


def test_the_lock_is_the_folders_own_and_held_within_one_process_too(tmp_path):
    folder = RunDir(tmp_path / "run")
    with folder.held():
        assert (tmp_path / "run" / LOCK).is_file() and folder.holder() is not None
        with pytest.raises(RunFolderError, match=f"is in use by process {os.getpid()}"):
            with RunDir(tmp_path / "run").held():
                pass
    assert folder.holder() is None


def write_npz(path: Path, count: int) -> str:
    rng = np.random.default_rng(count)
    np.savez(path, images=rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8), labels=np.arange(count) % 2)
    return str(path)


def test_a_data_file_that_changed_after_a_run_is_refused_like_a_changed_key(tmp_path):
    """A stage trained on changed data is refused, naming the data; an evaluation alone runs again on the
    new data (as after a changed evaluation key), its earlier results kept beside: nothing stale."""
    data = {"name": "npz", "train_path": write_npz(tmp_path / "train.npz", 64), "train_size": None}
    data |= {"test_path": write_npz(tmp_path / "test.npz", 60), "test_size": None}
    exp = build_experiment(tiny_config(stages=["train", "eval"], data=data, train={"epochs": 1}))
    assert run_experiment(exp, out=tmp_path / "run")["benign"]["total"] == 60
    assert run_experiment(exp, out=tmp_path / "run")["benign"]["total"] == 60  # unchanged: skipped
    write_npz(tmp_path / "train.npz", 48)
    content = r"the content of data: train_path: [0-9a-f]{64}, test_path: [0-9a-f]{64} -> train_path"
    with pytest.raises(RunFolderError, match=rf"computed from other data \({content}"):
        run_experiment(exp, out=tmp_path / "run")
    evaluation = {"name": "npz", "path": write_npz(tmp_path / "eval.npz", 60), "test_size": None}
    dense = {"checkpoint": str(tmp_path / "run" / "dense.ckpt")}
    exp = build_experiment(tiny_config(stages=["eval"], model=dense, data=evaluation, eval={"models": ["dense"]}))
    assert run_experiment(exp, out=tmp_path / "eval")["benign"]["total"] == 60
    write_npz(tmp_path / "eval.npz", 40)
    assert run_experiment(exp, out=tmp_path / "eval")["benign"]["total"] == 40


def test_a_run_started_from_a_checkpoint_that_changed_since_is_refused(tmp_path):
    """A sweep's cells start from a dense run's checkpoint: restarting that run afterwards must not change
    the model behind the cells' finished stages without a word."""
    dense = tiny_config(stages=["train"], train={"epochs": 1})
    run_experiment(build_experiment(dense), out=tmp_path / "dense")
    cell = tiny_config(stages=["prune", "eval"], model={"checkpoint": str(tmp_path / "dense" / "dense.ckpt")})
    run_experiment(build_experiment(cell), out=tmp_path / "cell")
    run_experiment(build_experiment({**dense, "seed": 1}), out=tmp_path / "dense", restart=True)
    change = r"the content of model.checkpoint: [0-9a-f]{64} -> [0-9a-f]{64}"
    with pytest.raises(RunFolderError, match=rf"computed from another model.checkpoint \({change}\)"):
        run_experiment(build_experiment(cell), out=tmp_path / "cell")


def test_an_interrupted_or_killed_sweep_leaves_no_run_behind(tmp_path):
    base = tiny_config(stages=["train"], prune=None, **SLOW)  # no prune section: the cell trains in its folder
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    for how in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        spec = {"base": "base.yaml", "out": str(tmp_path / how.name), "cells": [{"name": "slow"}]}
        (tmp_path / f"{how.name}.yaml").write_text(yaml.safe_dump(spec))
        sweep = gkp("sweep", str(tmp_path / f"{how.name}.yaml"))
        cell = RunDir(tmp_path / how.name / "slow")
        wait_for(lambda cell=cell: cell.holder() is not None)
        sweep.send_signal(how)
        sweep.wait(timeout=60)
        wait_for(lambda cell=cell: cell.holder() is None, seconds=30)  # its run died with it
        if how != signal.SIGKILL:
            assert "stopped" in sweep.stdout.read() and "run the same command again to resume" in sweep.stderr.read()


def test_a_sweep_does_not_start_a_cell_another_process_holds(tmp_path, capsys):
    base = tiny_config(stages=["train"], prune=None, train={"epochs": 1})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {"base": "base.yaml", "out": str(tmp_path / "sweep"), "cells": [{"name": "held"}, {"name": "free"}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    with RunDir(tmp_path / "sweep" / "held").held():
        main(["sweep", str(tmp_path / "spec.yaml")])
    assert f"held is running in process {os.getpid()}" in capsys.readouterr().out
    assert run_status(tmp_path / "sweep" / "held", ["train"]) == "missing"
    assert run_status(tmp_path / "sweep" / "free", ["train"]) == "done"


def test_a_folder_of_other_things_is_never_written_into(tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("mine: true\n")
    config = write_config(tmp_path / "tiny.yaml", tiny_config(stages=["train"], train={"epochs": 1}))
    assert main(["run", str(config), "--out", str(foreign)]) == 2
    assert "holds other files and is not a run folder" in capsys.readouterr().err
    assert (foreign / "config.yaml").read_text() == "mine: true\n" and sorted(os.listdir(foreign)) == ["config.yaml"]


def test_export_does_not_replace_an_existing_file_unless_asked(tmp_path, capsys):
    config = write_config(tmp_path / "tiny.yaml", tiny_config(stages=["train"], train={"epochs": 1}))
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 0
    dense = tmp_path / "run" / "dense.ckpt"
    before = dense.read_bytes()
    capsys.readouterr()
    assert main(["export", str(dense), "--out", str(dense), "--force"]) == 2  # never over its own input
    assert "is the file being read" in capsys.readouterr().err and dense.read_bytes() == before
    assert main(["export", str(dense), "--out", str(tmp_path / "run" / "masked.ckpt")]) == 0
    assert main(["export", str(dense), "--out", str(tmp_path / "run" / "masked.ckpt")]) == 2
    assert "exists (a run's checkpoint, maybe)" in capsys.readouterr().err
    assert main(["export", str(dense), "--out", str(tmp_path / "copy.safetensors")]) == 0
    assert main(["export", str(dense), "--out", str(tmp_path / "copy.safetensors")]) == 2
    assert main(["export", str(dense), "--out", str(tmp_path / "copy.safetensors"), "--force"]) == 0


def test_temporary_files_of_killed_writes_are_removed_by_the_next_run_in_the_folder(tmp_path):
    config = write_config(tmp_path / "tiny.yaml", tiny_config(stages=["train"], train={"epochs": 1}))
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [
        tmp_path / "run" / f".dense.ckpt.{dead.stdout.strip()}.tmp",
        tmp_path / "run" / "state" / f".x.{dead.stdout.strip()}.tmp.npz",
        tmp_path / "run" / f".curve.png.{dead.stdout.strip()}.tmp.png",
    ]
    for path in stale:
        path.write_bytes(b"half a file")
    mine = tmp_path / "run" / f".keep.{os.getpid()}.tmp"  # a live process's: left alone
    mine.write_bytes(b"in progress")
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 0
    assert not any(path.exists() for path in stale) and mine.exists()


def test_sweeping_on_slurm_off_a_cluster_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_config(stages=["train"])))
    spec = write_config(
        tmp_path / "spec.yaml", {"base": "base.yaml", "out": str(tmp_path / "sweep"), "cells": [{"name": "a"}]}
    )
    assert main(["sweep", str(spec), "--launcher", "slurm"]) == 2
    error = capsys.readouterr().err.strip()
    assert "SLURM is not here (no sbatch on PATH)" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "sweep").exists()


def test_a_changed_rate_is_told_how_to_reuse_the_trained_model_and_a_sweep_reuses_it(tmp_path, monkeypatch, capsys):
    """After a finished run, a new rate is refused with the way to start from its dense model; a sweep of the
    same training finds that run under runs/ and trains nothing again."""
    monkeypatch.chdir(tmp_path)
    config = tiny_config(train={"epochs": 1}, finetune={"epochs": 1}, attacks=[])
    write_config(tmp_path / "q.yaml", config)
    assert main(["run", "q.yaml", "--out", "runs/q"]) == 0
    capsys.readouterr()
    assert main(["run", "q.yaml", "--out", "runs/q", "--set", "prune.rate=0.25"]) == 2
    error = capsys.readouterr().err
    hint = "--set model.checkpoint=runs/q/dense.ckpt --set 'stages=[prune,finetune,eval]'"
    assert f"to reuse its trained model: --out NEW {hint}" in error
    reuse = ["--set", "model.checkpoint=runs/q/dense.ckpt", "--set", "stages=[prune,finetune,eval]"]
    assert main(["run", "q.yaml", "--out", "runs/q25", "--set", "prune.rate=0.25", *reuse]) == 0
    assert not (tmp_path / "runs" / "q25" / "train.json").exists()
    spec = {"base": "q.yaml", "out": "runs/sweep", "grid": {"prune.rate": [0.25, 0.5]}}
    write_config(tmp_path / "sweep.yaml", spec)
    capsys.readouterr()
    assert main(["sweep", "sweep.yaml", "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert table.count("from runs/q (finished)") == 2 and "dense-" not in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_a_paper_table_on_a_machine_without_a_gpu_names_the_cpu_and_asks_for_allow_cpu(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = str(ROOT / "configs" / "sweeps" / "table10.yaml")
    assert main(["sweep", spec, "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("runs on this machine: the CPU (no GPU is visible)")
    assert main(["sweep", spec]) == 2
    error = capsys.readouterr().err
    assert "no GPU is visible" in error and "GPU-hours of training left" in error and "--allow-cpu" in error
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_output_piped_into_a_reader_that_leaves_ends_without_a_traceback():
    """gkp zoo | head -1: the reader closes the pipe; the command stops quietly, as cat would (128 + SIGPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before gkp writes its first line
    done = subprocess.run([sys.executable, "-m", "gkp", "zoo"], stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    assert done.returncode == 128 + signal.SIGPIPE and done.stderr == ""


def test_sigterm_ends_a_run_like_ctrl_c_and_the_same_command_resumes_it(tmp_path):
    eight = {"train": {"epochs": 8, "eval_every": 0}, "data": {"train_size": 2048}}  # 7 epochs left: seconds
    config = write_config(tmp_path / "tiny.yaml", tiny_config(stages=["train"], **eight))
    folder = tmp_path / "run"
    run = gkp("run", str(config), "--out", str(folder))
    wait_for(lambda: (folder / "state" / "train_last.ckpt").is_file())  # an epoch finished
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 128 + signal.SIGTERM
    assert run.stderr.read().splitlines()[-1] == "gkp: terminated; run the same command again to resume"
    assert run_status(folder, ["train"]) == "partial"
    assert main(["run", str(config), "--out", str(folder)]) == 0


def test_a_full_disk_ends_in_one_line_naming_the_file_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    import errno

    config = write_config(tmp_path / "tiny.yaml", tiny_config(stages=["train"], train={"epochs": 2}))
    folder = tmp_path / "run"
    real_save, calls = torch.save, []

    def full_on_the_second_epoch(obj, target, *args, **kwargs):
        calls.append(target)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")  # as a write raises it: no file named
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_on_the_second_epoch)
    assert main(["run", str(config), "--out", str(folder)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("gkp: error: No space left on device writing ")
    assert f"writing {folder / 'state' / 'train_last.ckpt'};" in error
    assert "free some space and run the same command again" in error
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["run", str(config), "--out", str(folder)]) == 0 and run_status(folder, ["train"]) == "done"
