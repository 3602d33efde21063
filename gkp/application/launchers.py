"""How a sweep's runs are started. Every run is what ``gkp run CONFIG --out FOLDER`` does, the runner
(``gkp.application.pipeline.run.run_experiment``) on that config and folder, which resumes from the folder,
so any launcher can stop, crash or be preempted and a rerun continues.

- ``local``: that command as a process of its own on this machine (each sees one GPU, through
  ``CUDA_VISIBLE_DEVICES``), one run per visible GPU at a time (one at a time on a CPU).
- ``slurm``: job arrays submitted through submitit (https://github.com/facebookincubator/submitit, a
  maintained launcher; we do not write a job scheduler); each job calls the runner in its own process.
  One array holds the shared dense models and the cells that train their own; the cells that start from a
  shared dense model go in a second array that waits for the first (``afterok``). A preempted or
  timed-out job is requeued by submitit and its run resumes from the last finished epoch. With
  ``gpus_per_run`` above 1 a run spans that many tasks, which the run joins as one ``torch.distributed``
  group (see ``gkp.mechanisms.engine.distributed``).
- ``submitit-local``: the same submitit code on this machine, each job a local process; the way to try
  the SLURM path (and what the tests run). It waits for the dense models before starting the cells,
  since submitit's local executor has no dependencies.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gkp.foundation.errors import ConfigError
from gkp.foundation.files import write_text_atomic


@dataclass(frozen=True)
class Job:
    """One run to start: ``gkp run config --out folder``."""

    name: str
    config: Path
    folder: Path
    needs: Path | None = None  # the shared dense run it starts from


# ------------------------------------------------------------------------------------------- local


def visible_gpus() -> list[str | None]:
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] or [None]


def run_locally(dense: Sequence[Job], cells: Sequence[Job], dense_done, devices: list[str | None]) -> list[str]:
    """The dense models, then the cells whose dense model is there; returns the names of the failed runs."""
    failed = _run_processes(dense, devices)
    return failed + _run_processes([job for job in cells if job.needs is None or dense_done(job.needs)], devices)


PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when the one that started it dies


def _dies_with_the_sweep() -> Callable[[], None] | None:
    """What each child runs before it starts: on Linux the kernel then sends it SIGTERM when the sweep's
    process ends, however it ends (kill -9 included), so no run outlives the sweep that started it. prctl is
    looked up here, in the sweep: after the fork only async-signal-safe work is safe (a library lookup
    could wait forever on a lock another of the sweep's threads held)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl, sweep = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

    def child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != sweep:  # the sweep ended before the request was made
            os.kill(os.getpid(), signal.SIGTERM)

    return child


def _run_processes(jobs: Sequence[Job], devices: list[str | None]) -> list[str]:
    """Run the jobs as subprocesses, one per device at a time; returns the names of those that failed.
    If the sweep is interrupted (SIGINT, SIGTERM) its runs are stopped the same way and waited for; each
    resumes from its last epoch when the sweep runs again."""
    failed, running, queue = [], {}, list(jobs)
    before_start = _dies_with_the_sweep()
    try:
        while queue or running:
            while queue and len(running) < len(devices):
                job = queue.pop(0)
                busy = {device for device, _ in running.values()}
                device = next(d for d in devices if d not in busy)
                env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": device} if device is not None else {})}
                command = [sys.executable, "-m", "gkp", "run", str(job.config), "--out", str(job.folder)]
                running[subprocess.Popen(command, env=env, preexec_fn=before_start)] = (device, job.name)
                print(f"sweep: {job.name} started" + (f" on GPU {device}" if device is not None else ""), flush=True)
            for process in [p for p in running if p.poll() is not None]:
                _, name = running.pop(process)
                print(f"sweep: {name} {'done' if process.returncode == 0 else 'FAILED'}", flush=True)
                if process.returncode != 0:
                    failed.append(name)
            time.sleep(0.2)
    finally:
        _stop(running)
    return failed


GRACE_SECONDS = 5  # for runs that got the terminal's Ctrl-C themselves to end before they are told to


def _stop(running: dict) -> None:
    """Interrupt the runs still going (each keeps its last finished epoch) and wait for them to end."""
    deadline = time.monotonic() + GRACE_SECONDS
    while any(process.poll() is None for process in running) and time.monotonic() < deadline:
        time.sleep(0.1)
    for process in running:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process, (_, name) in running.items():
        process.wait()
        print(f"sweep: {name} stopped", flush=True)


# ------------------------------------------------------------------------------------------- submitit


@dataclass(frozen=True)
class RunJob:
    """What a submitit job executes: one run, in the job's own process. With several tasks (one per GPU of
    a multi-GPU run) each task joins the run's process group as ``torchrun`` would have made it."""

    config: str
    folder: str

    def __call__(self) -> str:
        from gkp.application.config import load_experiment
        from gkp.application.pipeline.run import run_experiment

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
        _export_process_group()
        run_experiment(load_experiment(self.config), out=self.folder)
        return self.folder

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit when SLURM preempts the job or its time runs out: requeue the same run, which
        resumes from its last epoch checkpoint."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)


def _export_process_group() -> None:
    """MASTER_ADDR, RANK, WORLD_SIZE, LOCAL_RANK for ``torch.distributed`` when the job has several tasks."""
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


@dataclass(frozen=True)
class SlurmOptions:
    """The resources of each job (one run); ``extra`` holds further sbatch options (``--slurm-option``)."""

    partition: str | None = None
    time_minutes: int = 24 * 60
    gpus_per_run: int = 1
    cpus_per_gpu: int = 8
    mem_gb: int | None = None
    account: str | None = None
    max_parallel: int = 64
    extra: dict[str, str] = field(default_factory=dict)


def check_launcher(launcher: str) -> None:
    """Refuse, before anything is written, a launcher this machine cannot use: submitit missing, or
    ``slurm`` where SLURM's commands are not (off the cluster)."""
    if launcher == "local":
        return
    if importlib.util.find_spec("submitit") is None:
        raise ConfigError(
            f"--launcher {launcher} needs submitit: pip install 'robust-gkp[slurm]' (or pip install submitit)"
        )
    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError(
            "--launcher slurm: SLURM is not here (no sbatch on PATH); run the sweep on the cluster's login node, "
            "or use --launcher local"
        )


def _executor(folder: Path, cluster: str, options: SlurmOptions):
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    gpus = options.gpus_per_run
    executor.update_parameters(
        name=f"gkp-{folder.parent.name}",  # the sweep's folder
        timeout_min=options.time_minutes,
        tasks_per_node=max(gpus, 1),
        gpus_per_node=gpus,
        cpus_per_task=options.cpus_per_gpu,
        mem_gb=options.mem_gb,
        slurm_partition=options.partition,
        slurm_account=options.account,
        slurm_array_parallelism=options.max_parallel,
        slurm_additional_parameters=dict(options.extra),
    )
    return executor


def _submit(executor, jobs: Sequence[Job], options: SlurmOptions, after: list[Any] | None = None) -> list[Any]:
    if not jobs:
        return []
    if after:
        array_ids = sorted({submission.job_id.split("_")[0] for submission in after})
        extra = {**options.extra, "dependency": "afterok:" + ":".join(array_ids)}
        executor.update_parameters(slurm_additional_parameters=extra)
    with executor.batch():  # one job array
        submitted = [executor.submit(RunJob(str(job.config), str(job.folder))) for job in jobs]
    for job, submission in zip(jobs, submitted, strict=True):
        print(f"sweep: {job.name} submitted as job {submission.job_id}", flush=True)
    return submitted


def _wait(jobs: Sequence[Job], submitted: list[Any]) -> list[str]:
    """Wait for the jobs; the names of those that failed."""
    failed = []
    for job, submission in zip(jobs, submitted, strict=True):
        if submission.exception() is not None:
            print(f"sweep: {job.name} FAILED (log: {submission.paths.stderr})", flush=True)
            failed.append(job.name)
        else:
            print(f"sweep: {job.name} done", flush=True)
    return failed


JOB_FILE = ".slurm_job"  # in a run folder: the SLURM job last submitted for it


def _still_queued(jobs: Sequence[Job]) -> set[Path]:
    """The run folders whose job from an earlier submission (by any sweep) is still pending or running
    (``squeue``, one line per array task), so that no second job starts on the same run folder."""
    submitted = {
        job.folder: (job.folder / JOB_FILE).read_text().strip() for job in jobs if (job.folder / JOB_FILE).is_file()
    }
    if not submitted:
        return set()
    listed = subprocess.run(
        ["squeue", "--noheader", "--array", "--format=%i", "--jobs=" + ",".join(submitted.values())],
        capture_output=True,
        text=True,
    )
    active = set(listed.stdout.split())
    return {folder for folder, job_id in submitted.items() if job_id in active}


def submit_to_slurm(dense: Sequence[Job], cells: Sequence[Job], dense_done, log_folder: Path, options) -> None:
    """Submit the dense models and the cells that need none of them now, and the cells waiting for a dense
    model as an array that starts once the dense models' array succeeded. Returns at once; the jobs run on
    the cluster (``gkp sweep SPEC --dry-run`` follows them; rerun the sweep to resubmit what failed)."""
    queued = _still_queued([*dense, *cells])
    for folder in sorted(queued):
        print(f"sweep: {folder.name} is still queued or running from an earlier submission; not resubmitted")
    dense = [job for job in dense if job.folder not in queued]
    cells = [job for job in cells if job.folder not in queued]
    waiting = [job for job in cells if job.needs is not None and not dense_done(job.needs)]
    ready = [job for job in cells if job not in waiting]
    executor = _executor(log_folder, "slurm", options)
    dense_jobs = _submit(executor, dense, options)
    submitted = [*dense_jobs, *_submit(executor, ready, options), *_submit(executor, waiting, options, dense_jobs)]
    for job, submission in zip([*dense, *ready, *waiting], submitted, strict=True):
        job.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(job.folder / JOB_FILE, submission.job_id + "\n")
    print(f"sweep: job logs in {log_folder}; follow with squeue, or gkp sweep SPEC --dry-run", flush=True)


def run_with_submitit_locally(dense: Sequence[Job], cells: Sequence[Job], dense_done, log_folder: Path, options):
    """The SLURM path on this machine (submitit's local executor): the dense models first, waited for, then
    the cells whose dense model is there; returns the names of the failed runs."""
    executor = _executor(log_folder, "local", options)
    failed = _wait(dense, _submit(executor, dense, options))
    ready = [job for job in cells if job.needs is None or dense_done(job.needs)]
    return failed + _wait(ready, _submit(executor, ready, options))
