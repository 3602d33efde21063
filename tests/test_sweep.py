"""Sweeps: a grid of overrides over one config, cells sharing one dense model trained once, rerun to
continue, and a dry run that says where each run stands."""

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
import yaml

from gkp.application.cli import main
from gkp.application.pipeline.rundir import RunDir
from gkp.application.sweep import load_sweep, run_status

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
    cells = [{"prune.method": "tmigkp"}, {"prune.method": "gal"}, {"prune.method": "sfp", "stages": ["prune", "eval"]}]
    path = spec(tmp_path, {"prune.method": ["l1", "srgkp"]}, cells=cells)
    sweep = load_sweep(path)
    assert [c.name for c in sweep.cells] == [
        "method-l1",
        "method-srgkp",
        "method-tmigkp",
        "method-gal",
        "method-sfp_stages-_prune_eval_",
    ]
    assert len(sweep.dense_runs) == 1 and sweep.cells[0].dense == sweep.cells[1].dense
    assert sweep.cells[2].dense is None  # TMI-GKP reads training snapshots: it trains its own model
    assert sweep.cells[3].problem == "no such method yet: gal"
    assert main(["sweep", str(path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "runs on this machine: the CPU (no GPU is visible), one run at a time"
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["method-gal"].split()[1:3] == ["cannot", "run"] and rows["method-l1"].split()[1] == "missing"
    assert rows["method-sfp_stages-_prune_eval_"].endswith(
        "trains its own model"
    )  # from scratch, inside its prune stage


@pytest.mark.slow
def test_a_sweep_runs_its_dense_model_once_and_a_rerun_runs_nothing_again(tmp_path):
    from gkp.application.sweep import run_sweep

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
@pytest.mark.parametrize("launcher", ["local", "submitit-local"])
def test_the_digits_quick_start_as_a_sweep_resumes_a_killed_cell(tmp_path, launcher):
    """2 methods x 2 rates of the quick start: one dense model; a cell killed mid-epoch finishes on rerun
    and nothing else runs again (submitit-local: the SLURM launcher's code, each job a local process)."""
    root = Path(__file__).resolve().parents[1]
    base = yaml.safe_load((root / "configs" / "quickstart.yaml").read_text())
    path = spec(tmp_path, {"prune.method": ["l1", "srgkp"], "prune.rate": [0.4375, 0.625]}, base=base)
    sweep = load_sweep(path)
    assert len(sweep.dense_runs) == 1 and len(sweep.cells) == 4
    command = [sys.executable, "-m", "gkp", "sweep", str(path), "--launcher", launcher]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    target = sweep.cells[1].folder / "state" / "finetune_last.ckpt"
    deadline = time.time() + 1200
    while not target.exists() and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the sweep and the runs it started
    process.wait()
    deadline = time.time() + 30  # the killed run's lock is released as the kernel ends it, a moment later
    while RunDir(sweep.cells[1].folder).holder() is not None and time.time() < deadline:
        time.sleep(0.1)
    statuses = [run_status(c.folder, c.raw["stages"]) for c in sweep.cells]
    assert statuses[1] == "partial"
    if launcher == "local":  # one run at a time, in order
        assert statuses[0] == "done" and statuses[2:] == ["missing", "missing"]
    dense = next(iter(sweep.dense_runs))
    finished = [dense, *(c.folder for c, status in zip(sweep.cells, statuses, strict=True) if status == "done")]
    before = {p: p.stat().st_mtime_ns for folder in finished for p in folder.rglob("*.ckpt")}
    assert subprocess.run(command, capture_output=True, timeout=1800).returncode == 0
    assert all(run_status(c.folder, c.raw["stages"]) == "done" for c in sweep.cells)
    assert before == {p: p.stat().st_mtime_ns for p in before}  # nothing finished ran again


def test_the_dry_run_counts_the_epochs_left_and_times_them_from_the_measured_ones(tmp_path):
    from gkp.application.sweep import epochs_left, status_table

    path = spec(tmp_path, {"prune.method": ["l1"]}, base=tiny_config(train={"epochs": 3}, finetune={"epochs": 2}))
    sweep = load_sweep(path)
    dense = next(iter(sweep.dense_runs))
    dense.mkdir(parents=True)
    (dense / "metrics.csv").write_text("stage,epoch,seconds\ntrain,1,3600\n")
    assert epochs_left(dense, sweep.dense_runs[dense]) == (2, 3600.0)
    cell = sweep.cells[0]
    assert epochs_left(cell.folder, cell.raw) == (2, None)  # its fine-tuning; no epoch of it measured yet
    table = status_table(sweep)
    assert "2 epochs, ~2.0 h" in table and "2 epochs, ~0.0 GPU-h (estimated)" in table


def test_runs_not_yet_timed_are_estimated_from_their_passes_at_a_v100s_speed():
    """The two references: ResNet-20's CIFAR-10 training epoch takes 12.5 s (the authors' demo), ResNet-50
    trains 367 ImageNet images a second, less the overhead per pass; the paper's per-epoch evaluation (FGSM
    0.01, 0.1 and PGD-3 on 10,000 images) adds its passes; data of unknown size: None."""
    from gkp.application.config import build_experiment
    from gkp.application.sweep import estimated_epoch_seconds

    raw = {"model": {"arch": "resnet20"}, "data": {"name": "cifar10"}, "train": {"eval_every": 0}, "stages": ["train"]}
    assert estimated_epoch_seconds(build_experiment(raw), "train", "train") == pytest.approx(12.5, rel=1e-3)
    raw |= {"attacks": [{"suite": "paper-cifar"}], "train": {"eval_attacks": ["fgsm_0.01", "fgsm_0.1", "pgd_3"]}}
    evaluation = 10_000 * (1 + 4 + 4 + 10) / (50_000 * 3)
    assert estimated_epoch_seconds(build_experiment(raw), "train", "train") == pytest.approx(
        12.5 * (1 + evaluation), rel=1e-3
    )
    resnet50 = {**raw, "model": {"arch": "resnet50"}, "data": {"name": "imagefolder", "root": "missing"}}
    resnet50 |= {"train": {"eval_every": 0}, "attacks": []}
    seconds = estimated_epoch_seconds(build_experiment(resnet50), "train", "train")
    assert 1_281_167 / seconds == pytest.approx(340, rel=0.02)  # 367 images/s of compute alone
    raw["data"] = {"name": "npz", "train_path": "a.npz", "test_path": "b.npz"}
    assert estimated_epoch_seconds(build_experiment(raw), "train", "train") is None


def test_the_table10_script_lists_exactly_the_papers_rows():
    """Table 10 of ../shared/specs/paper.md: every method row, the missing methods listed as such, one
    dense model shared by the cells that train it the same way (CC's too: its crop padding is its
    fine-tune's; TMI-GKP reads snapshots, SFP trains from scratch)."""
    root = Path(__file__).resolve().parents[1]
    assert "configs/sweeps/table10.yaml" in (root / "scripts" / "paper" / "table10.sh").read_text()
    sweep = load_sweep(root / "configs" / "sweeps" / "table10.yaml")
    paper = ["SR-GKP", "TMI-GKP", "FPGM", "SFP", "RAP-ADMM", "HRank", "L1Norm-A", "L1Norm-B", "CC", "DHP", "GAL"]
    assert [cell.name for cell in sweep.cells] == [*paper, "LRF", "NPPM"]
    missing = {cell.name for cell in sweep.cells if cell.problem}
    assert missing == {"DHP", "GAL", "NPPM"}
    assert len(sweep.dense_runs) == 1
    own = {cell.name for cell in sweep.cells if not cell.problem and cell.dense is None}
    assert own == {"TMI-GKP", "SFP"}
    assert "dense" in build_experiment_of(sweep, "SR-GKP").eval.models  # the Unpruned row


def build_experiment_of(sweep, name):
    from gkp.application.config import build_experiment

    return build_experiment(next(cell for cell in sweep.cells if cell.name == name).raw)


def fake_slurm(tmp_path: Path, monkeypatch, active: str = "") -> Path:
    """sbatch, squeue and srun stand-ins on PATH: sbatch keeps each script it is given and answers with a
    new job id (1000, 1001, ...); squeue lists ``active``; srun is only looked for."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "sbatch"
    bin_dir.mkdir(exist_ok=True)
    scripts.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\nn=$(ls {scripts} | wc -l)\ncp "$1" {scripts}/$n.sh\necho "Submitted batch job $((1000 + n))"\n'
    )
    (bin_dir / "squeue").write_text(f"#!/bin/sh\necho '{active}'\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "squeue", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return scripts


def test_slurm_submits_the_dense_models_then_the_cells_that_wait_for_them(tmp_path, monkeypatch, capsys):
    from gkp.application.launchers import SlurmOptions
    from gkp.application.sweep import run_sweep

    scripts = fake_slurm(tmp_path, monkeypatch)
    sweep = load_sweep(spec(tmp_path, {"prune.method": ["l1", "srgkp"]}, cells=[{"prune.method": "tmigkp"}]))
    options = SlurmOptions(partition="gpu", time_minutes=90, gpus_per_run=2, extra={"qos": "high"})
    assert run_sweep(sweep, "slurm", options) == []
    dense, own, waiting = ((scripts / f"{n}.sh").read_text() for n in range(3))
    assert "--array" not in dense + own and "#SBATCH --array=0-1%2" in waiting  # one job each; l1 and srgkp
    assert "--dependency" not in dense + own and "#SBATCH --dependency=afterok:1000" in waiting
    for line in ("--partition=gpu", "--time=90", "--gpus-per-node=2", "--ntasks-per-node=2", "--qos=high"):
        assert f"#SBATCH {line}" in dense and f"#SBATCH {line}" in waiting, line
    assert "#SBATCH --job-name=gkp-out" in dense
    assert "#SBATCH --signal=USR2@" in dense  # submitit's warning before preemption or the time limit: requeue
    jobs = {cell.name: (cell.folder / ".slurm_job").read_text().strip() for cell in sweep.cells}
    assert jobs == {"method-l1": "1002_0", "method-srgkp": "1002_1", "method-tmigkp": "1001"}
    assert (next(iter(sweep.dense_runs)) / ".slurm_job").read_text().strip() == "1000"
    # a rerun while those jobs are queued or running submits none of them again
    fake_slurm(tmp_path, monkeypatch, active="1000 1001 1002_0 1002_1")
    run_sweep(sweep, "slurm", options)
    assert len(list(scripts.iterdir())) == 3 and "still queued or running" in capsys.readouterr().out


def test_a_preempted_job_is_requeued_as_the_same_run():
    from gkp.application.launchers import RunJob

    job = RunJob("configs/quickstart.yaml", "runs/quickstart")
    again = job.checkpoint()
    assert again.function == job and again.args == () and again.kwargs == {}


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_its_run_resumes_from_the_last_epoch(tmp_path):
    """submitit's local executor sends the job SLURM's preemption signal mid-training: submitit requeues
    it, and the run continues after its last finished epoch; every epoch is trained once."""
    import submitit

    from gkp.application.launchers import RunJob

    config = write_config(
        tmp_path / "c.yaml", tiny_config(stages=["train"], train={"epochs": 6}, data={"train_size": 1024})
    )
    executor = submitit.AutoExecutor(folder=str(tmp_path / "jobs"), cluster="local")
    job = executor.submit(RunJob(str(config), str(tmp_path / "run")))
    checkpoint = tmp_path / "run" / "state" / "train_last.ckpt"
    deadline = time.time() + 600
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.1)
    for task in _job_processes(tmp_path / "jobs"):  # what SLURM's --signal=USR2 does before preempting it
        os.kill(task, signal.SIGUSR2)
    assert job.result() == str(tmp_path / "run")
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == [str(e) for e in range(1, 7)]
    assert "resuming after epoch" in Path(job.paths.stderr).read_text() + Path(job.paths.stdout).read_text()


def _job_processes(folder: Path) -> list[int]:
    """The pids of the processes running submitit jobs of ``folder`` (the job's own, not its controller)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in command and str(folder).encode() in command:
            found.append(int(entry.name))
    return found
