"""The run folder: resolved config, environment, metrics, TensorBoard logs, stage markers, resume state.

::

    runs/<name>/config.yaml    the resolved config of the latest invocation
                env.json       library versions, git commit, device (latest invocation first)
                metrics.csv    one row per epoch of every training stage
                tb/<stage>/    TensorBoard scalars
                snapshots/     epoch_NNNN.ckpt weight snapshots the train stage keeps (TMI-GKP reads them)
                per_sample_<model>.npz  per-sample flags of the evaluation, and minimum-norm attacks' norms
                state/         <stage>_last.ckpt (resume), <stage>.started and <stage>.done markers
                .gkp-run       marks the folder as a run folder (a folder without it is never written into)
                .gkp-lock      locked by the process running in the folder: one process at a time

Each stage has a fingerprint: a hash of the config sections it depends on (``stages.STAGES`` names
them). A finished stage with the same fingerprint is skipped; a finished or interrupted stage with a
different one stops the run with the differing keys named, so finished results are never overwritten
silently. The markers record the fingerprints' version (``stages.FINGERPRINT_VERSION``): a folder of
another version is refused, with how to rerun.
"""

from __future__ import annotations

import csv
import fcntl
import io
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from gkp.application.checkpoints.io import read_checkpoint, save_checkpoint
from gkp.application.pipeline.stages import EXECUTION_ONLY, FINGERPRINT_VERSION, RESULTS_FILE
from gkp.foundation.errors import RunFolderError
from gkp.foundation.files import (
    read_json_cache,
    read_json_mapping,
    remove_stale_temporaries,
    replaced_atomically,
    write_json_atomic,
    write_text_atomic,
    writes_files,
)
from gkp.foundation.schema import to_yaml
from gkp.mechanisms.engine.evaluate import AttackOutcome
from gkp.mechanisms.engine.train import TrainingState

log = logging.getLogger(__name__)

MARKER = ".gkp-run"  # makes a folder a run folder: a folder without it is never written into
LOCK = ".gkp-lock"  # locked by the process running in the folder (``RunDir.held``)
EXECUTION_KEYS = ("device:", "name:", *(f"{section}.{key}:" for section, key in EXECUTION_ONLY))  # no conflict
LOCK_TRIES = 10  # a lock found taken is tried again for half a second before the holder is named


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _save_npz_atomic(path: Path, arrays: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path, ".npz") as temporary:  # np.savez would add .npz to another name
        np.savez(temporary, **arrays)


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Key paths where two plain configs differ, as 'key: old -> new' (list entries as key[i], so that a
    changed attack reads 'attacks[1].steps: 10 -> 20')."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in list(old) + [k for k in new if k not in old]:
            found += differences(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        return found
    if isinstance(old, list) and isinstance(new, list):
        pairs = [
            (old[i] if i < len(old) else None, new[i] if i < len(new) else None) for i in range(max(len(old), len(new)))
        ]
        return [d for i, (a, b) in enumerate(pairs) for d in differences(a, b, f"{path}[{i}]")]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return f"{commit}{'+dirty' if dirty else ''}" if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    import numpy
    import sklearn
    import torchvision

    import gkp

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "time": now(),
        "command": " ".join(sys.argv),
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gkp": gkp.__version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "scikit_learn": sklearn.__version__,
        "device": str(device),
        "device_name": name,
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.state = self.path / "state"
        self.inputs: dict[str, str | None] = {}  # the content of what the stages read, in their markers

    # ------------------------------------------------------------ identity and conflicts

    def _done_marker(self, stage: str) -> Path:
        return self.state / f"{stage}.done"

    def resume_path(self, stage: str) -> Path:
        return self.state / f"{stage}_last.ckpt"

    def snapshot_path(self, epoch: int) -> Path:
        return self.path / "snapshots" / f"epoch_{epoch:04d}.ckpt"

    def _started_marker(self, stage: str) -> Path:
        return self.state / f"{stage}.started"

    def recorded_fingerprints(self) -> dict[str, str]:
        """Fingerprints of the stages this folder has finished or started (a done marker wins), once the
        folder is known to come from this version of the fingerprints."""
        recorded = self._markers()
        versions = {record.get("version", 1) for record in recorded.values()}
        if versions - {FINGERPRINT_VERSION}:
            raise RunFolderError(
                f"{self.path} was made by an earlier version of gkp (run-folder version {min(versions)}; this is "
                f"version {FINGERPRINT_VERSION}), whose fingerprints cannot be compared with this config's. Its "
                f"results are kept: pass --out DIR for a new run, or --restart to move it aside to "
                f"{self.path.name}.old-<time> and start over"
            )
        return {stage: record["fingerprint"] for stage, record in recorded.items()}

    def _markers(self) -> dict[str, dict[str, Any]]:
        """What each stage's marker records, by stage (a done marker wins over a started one)."""
        markers = [m for suffix in ("started", "done") for m in sorted(self.state.glob(f"*.{suffix}"))]
        recovery = "delete it to run that stage again, or pass --restart to start the run over"
        return {marker.stem: read_json_mapping(marker, recovery) for marker in markers}

    def _changed_inputs(self, inputs: dict[str, str | None]) -> dict[str, list[str]]:
        """How the files the recorded stages read differ from ``inputs``, by the key naming them, as
        'old -> new'."""
        changed: dict[str, list[str]] = {}
        for record in self._markers().values():
            for key, old in (record.get("inputs") or {}).items():
                change = f"{old} -> {inputs.get(key)}"
                if old != inputs.get(key) and change not in changed.get(key, []):
                    changed.setdefault(key, []).append(change)
        return changed

    def _reuse_hint(self, conflicts: list[str], plain: dict[str, Any]) -> str:
        """Where only stages after training changed: how a new run starts from this folder's dense model
        instead of training it again."""
        dense = self.path / "dense.ckpt"
        later = [stage for stage in plain.get("stages", ()) if stage != "train"]
        if "train" in conflicts or not dense.is_file() or not later:
            return ""
        stages = ",".join(later)
        return (
            f"; to reuse its trained model: --out NEW --set model.checkpoint={dense} --set 'stages=[{stages}]' "
            "(a sweep reuses it by itself)"
        )

    def move_aside(self) -> None:
        """--restart: keep the previous run, renamed to <folder>.old-<time>, and start an empty one."""
        if self.path.exists() and writes_files():
            aside = self.path.with_name(f"{self.path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            self.path.rename(aside)
            log.warning("--restart: moved the previous run to %s", aside)

    def check_fits(
        self,
        plain: dict[str, Any],
        fingerprints: dict[str, str],
        repeatable: frozenset[str] = frozenset(),
        inputs: dict[str, str | None] | None = None,
    ) -> list[str]:
        """Refuse the folder, writing nothing, if it cannot be a run folder or its stages were computed from
        another config or other files; returns the ``repeatable`` stages whose own settings alone changed."""
        self.inputs = inputs or {}
        recorded = self.recorded_fingerprints()
        changed = [stage for stage, value in fingerprints.items() if recorded.get(stage, value) != value]
        repeated = changed if all(stage in repeatable for stage in changed) else []
        conflicts = [stage for stage in changed if stage not in repeated]
        if conflicts:
            old = self._recorded_config()
            keys = [d for d in differences(old, plain) if not d.startswith(EXECUTION_KEYS)] if old else []
            files = self._changed_inputs(self.inputs)
            sources = [*(["a different config"] if keys else [])]
            sources += ["other data" if key == "data" else f"another {key}" for key in files]
            details = [*keys[:6], *(f"the content of {key}: {', '.join(c)}" for key, c in files.items())]
            details += [] if old is not None else ["its config.yaml is damaged, so the keys cannot be named"]
            raise RunFolderError(
                f"{self.path} already holds stage(s) {', '.join(conflicts)} computed from "
                f"{' and '.join(sources) or 'a different config'} ({'; '.join(details) or 'see config.yaml'}). Its "
                "results are kept: pass --out DIR for a new run, or --restart to move the old run aside to "
                f"{self.path.name}.old-<time> and start over{self._reuse_hint(conflicts, plain)}"
            )
        self.check_usable()
        return repeated

    def _recorded_config(self) -> dict[str, Any] | None:
        """The folder's config.yaml ({} where there is none), or None where it is damaged: it only explains a
        conflict, which the fingerprints decide."""
        path = self.path / "config.yaml"
        try:
            found = yaml.safe_load(path.read_text()) if path.is_file() else {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None
        return found if isinstance(found, dict) else None

    def prepare(
        self,
        plain: dict[str, Any],
        fingerprints: dict[str, str],
        device: torch.device,
        repeatable: frozenset[str] = frozenset(),
        inputs: dict[str, str | None] | None = None,
    ) -> None:
        """Create or re-open the folder for the plain config ``plain`` whose stages have ``fingerprints``
        (and read files of the content ``inputs``), once ``check_fits`` accepts it. A ``repeatable`` stage
        whose own settings alone changed (the evaluation, with other attacks or models) runs again, and
        what it wrote before stays beside (``evaluations/``)."""
        recorded = self.recorded_fingerprints()
        repeated = self.check_fits(plain, fingerprints, repeatable, inputs)  # in every process of a run
        for stage in repeated if writes_files() else []:
            self._keep_results_aside(recorded[stage])
            self._started_marker(stage).unlink(missing_ok=True)
            self._done_marker(stage).unlink(missing_ok=True)
            log.info(
                "%s: its settings changed; it runs again, earlier results stay in %s", stage, self.path / "evaluations"
            )
        try:
            self.state.mkdir(parents=True, exist_ok=True)
            if not (self.path / MARKER).is_file():
                write_json_atomic(self.path / MARKER, {"version": FINGERPRINT_VERSION, "created": now()})
            write_text_atomic(self.path / "config.yaml", to_yaml(plain))
        except OSError as error:
            raise RunFolderError(
                f"{self.path} cannot be a run folder ({error.strerror or error}); pass --out a folder you can write"
            ) from error
        env_file = self.path / "env.json"
        previous = read_json_cache(env_file)  # a damaged record of earlier invocations is started afresh
        earlier = [{k: v for k, v in previous.items() if k != "earlier"}, *previous.get("earlier", [])]
        write_json_atomic(env_file, {**environment(device), "earlier": earlier if previous else []})

    def holds_other_things(self) -> bool:
        """Whether the folder exists with files in it (hidden ones aside) and is not a run folder."""
        visible = self.path.is_dir() and any(not p.name.startswith(".") for p in self.path.iterdir())
        return visible and not self.is_run_folder()

    def is_run_folder(self) -> bool:
        """Whether our marker says this folder is a run folder (one made before the marker existed has
        ``state/``, and is then refused as an earlier version, see ``recorded_fingerprints``)."""
        return (self.path / MARKER).is_file() or self.state.is_dir()

    def check_usable(self) -> None:
        """A run folder is new, empty, or a run folder already: never a file, never a folder of other
        things (another tool's config.yaml, say) that a run would write beside or over."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file, not a folder; pass --out a new or empty folder")
        if self.holds_other_things():
            raise RunFolderError(
                f"{self.path} holds other files and is not a run folder (it has no {MARKER}); pass --out a "
                "new or empty folder, so that nothing in it is mixed with a run's outputs or overwritten"
            )

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the folder for this process while the block runs: an OS lock on ``.gkp-lock`` that dies with
        the process however it ends (kill -9 included), so a second command on the folder stops at once,
        naming the holder, instead of mixing its results with the first's. Only the process that writes
        the run's files takes it (rank 0 of a run of several processes). Processes it forks (DataLoader
        workers) share the lock, so a killed run's folder is free once its workers have ended too (they
        end on their own when they find their parent gone)."""
        if not writes_files():
            yield
            return
        self.check_usable()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open(self.path / LOCK, "a+")  # noqa: SIM115 (closed below, after the block)
        except OSError as error:
            raise RunFolderError(
                f"{self.path} cannot be a run folder ({error.strerror or error}); pass --out a folder you can write"
            ) from error
        with handle:
            if self._locked(handle):
                handle.seek(0)
                handle.truncate()
                handle.write(f"process {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv)[:200]})\n")
                handle.flush()
                if removed := remove_stale_temporaries(self.path):  # no other process writes here now
                    log.info("removed %d temporary file(s) that interrupted writes left in %s", removed, self.path)
            yield

    def _locked(self, handle) -> bool:
        """Take the folder's lock: True once held. Held by another process (after a few tries: ``holder``
        takes it for a moment to look), a RunFolderError naming the holder. On a file system without
        locks (NFS mounted with nolock, Lustre without flock) False, with a warning: the folder is then not
        guarded against a second command."""
        for _ in range(LOCK_TRIES):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                time.sleep(0.05)
            except OSError as error:
                log.warning(
                    "%s cannot be locked (%s): nothing stops a second command on it; run one at a time",
                    self.path,
                    error.strerror or error,
                )
                return False
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        raise RunFolderError(
            f"{self.path} is in use by {holder}; wait for it to end, or pass --out DIR for a run of your own"
        )

    def holder(self) -> str | None:
        """Who holds the folder (see ``held``), or None when no process does."""
        lock = self.path / LOCK
        if not lock.is_file():
            return None
        with open(lock) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip() or "another process"
        return None

    def is_done(self, stage: str) -> bool:
        return self._done_marker(stage).is_file()

    def mark_started(self, stage: str, fingerprint_value: str) -> None:
        self._mark(self._started_marker(stage), fingerprint_value, "started")

    def mark_done(self, stage: str, fingerprint_value: str) -> None:
        self._mark(self._done_marker(stage), fingerprint_value, "finished")

    def _mark(self, marker: Path, fingerprint_value: str, when: str) -> None:
        """A stage's marker: its fingerprint, their version, the content of what it read, and when."""
        record = {"fingerprint": fingerprint_value, "version": FINGERPRINT_VERSION, "inputs": self.inputs}
        write_json_atomic(marker, {**record, when: now()})

    def per_sample_path(self, model: str) -> Path:
        return self.path / f"per_sample_{model}.npz"

    def write_per_sample(self, model: str, arrays: dict[str, np.ndarray], evaluation: str) -> None:
        """Per-sample flags (benign and each attack) and minimum-norm attacks' norms of one evaluated model,
        in the evaluation's folder and, as the latest, in the run folder."""
        for path in (self.evaluation_path(evaluation) / self.per_sample_path(model).name, self.per_sample_path(model)):
            _save_npz_atomic(path, arrays)

    # ------------------------------------------------------------ evaluations side by side

    def evaluation_path(self, evaluation: str) -> Path:
        """The folder of one evaluation (named by the eval stage's fingerprint): its results.json and
        per-sample files stay there when the run is evaluated again with other attacks or models."""
        return self.path / "evaluations" / evaluation

    def _partial_path(self, evaluation: str, model: str) -> Path:
        return self.evaluation_path(evaluation) / "partial" / model

    def finished_attacks(self, evaluation: str, model: str, checkpoint: str) -> dict[str, AttackOutcome]:
        """The attacks an interrupted evaluation of ``model`` finished on the same ``checkpoint`` (its
        identity: path, size and time), by label."""
        finished = {}
        for path in sorted(self._partial_path(evaluation, model).glob("[!.]*.npz")):  # not a half-written temp
            with np.load(path) as arrays:
                if str(arrays["checkpoint"]) != checkpoint:  # another model since (fine-tuned after a prune)
                    continue
                norms = arrays["norms"] if bool(arrays["has_norms"]) else None
                finished[path.stem] = AttackOutcome(arrays["correct"], norms, float(arrays["seconds"]))
        return finished

    def save_finished_attack(
        self, evaluation: str, model: str, checkpoint: str, label: str, outcome: AttackOutcome
    ) -> None:
        norms = outcome.norms if outcome.norms is not None else np.zeros(0)
        arrays = {"correct": outcome.correct, "norms": norms, "has_norms": outcome.norms is not None}
        arrays |= {"seconds": outcome.seconds, "checkpoint": checkpoint}
        _save_npz_atomic(self._partial_path(evaluation, model) / f"{label}.npz", arrays)

    def _keep_results_aside(self, evaluation: str) -> None:
        """Before an evaluation runs again: the latest results (and the config they came from) into their
        evaluation's folder, where runs made before evaluations/ existed have none yet."""
        folder = self.evaluation_path(evaluation)
        if (folder / RESULTS_FILE).is_file() or not (self.path / RESULTS_FILE).is_file():
            return
        folder.mkdir(parents=True, exist_ok=True)
        for path in [self.path / RESULTS_FILE, self.path / "config.yaml", *self.path.glob("per_sample_*.npz")]:
            if path.is_file():
                shutil.copy2(path, folder / path.name)

    def write_results(self, evaluation: str, results: dict[str, Any]) -> None:
        """The evaluation's results in its folder and, as the latest, in the run folder; its partial state
        is then no longer needed."""
        if not writes_files():
            return
        self.evaluation_path(evaluation).mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.evaluation_path(evaluation) / RESULTS_FILE, results)
        shutil.copy2(self.path / "config.yaml", self.evaluation_path(evaluation) / "config.yaml")
        write_json_atomic(self.path / RESULTS_FILE, results)
        evaluated = {f"per_sample_{entry['model']}.npz" for entry in [results, *results.get("other_models", [])]}
        for stale in self.path.glob("per_sample_*.npz"):  # models an earlier evaluation ran, this one did not
            if stale.name not in evaluated:
                stale.unlink()
        shutil.rmtree(self.evaluation_path(evaluation) / "partial", ignore_errors=True)

    def write_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """The evaluation's settings and results for TensorBoard's HParams view, in ``tb/eval`` (rewritten
        by each evaluation), so that the runs of a sweep compare there."""
        if not writes_files():
            return
        from torch.utils.tensorboard import SummaryWriter

        folder = self.path / "tb" / "eval"
        shutil.rmtree(folder, ignore_errors=True)
        with SummaryWriter(str(folder)) as writer:
            writer.add_hparams(hparams, metrics, run_name=".")

    # ------------------------------------------------------------ metrics

    def write_metrics(self, stage: str, history: list[dict[str, Any]]) -> None:
        """Rewrite metrics.csv with this stage's full history and the other stages' rows unchanged."""
        path = self.path / "metrics.csv"
        rows = []
        if path.is_file():
            rows = [r for r in csv.DictReader(io.StringIO(path.read_text())) if r["stage"] != stage]
        rows += [{"stage": stage, **row} for row in history]
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(path, buffer.getvalue())


class StageStore:
    """What ``engine.train.fit`` persists for one stage: resume state, best models, metrics, TensorBoard."""

    def __init__(self, run: RunDir, stage: str, fingerprint_value: str, best_prefix: str | None):
        """``best_prefix``: the best-epoch models are ``<best_prefix>best_<metric>.ckpt``; None: the model as
        it trains is not one a checkpoint can rebuild (a method's own modules in it), so none is kept."""
        self.run, self.stage, self.fingerprint = run, stage, fingerprint_value
        self.best_prefix = best_prefix
        self.writer = None

    def load_resume(self) -> tuple[TrainingState, dict[str, torch.Tensor]] | None:
        """(the state of the stage's last finished epoch, the model weights then), if an epoch finished."""
        path = self.run.resume_path(self.stage)
        if not path.is_file():
            return None
        payload = read_checkpoint(path)
        try:
            return TrainingState(**payload["training"]), payload["state_dict"]
        except (KeyError, TypeError):
            raise RunFolderError(
                f"{path} is not the resume checkpoint of the {self.stage} stage (no training state in it); "
                f"delete it to start the stage afresh, or --restart the run"
            ) from None

    def describe_last(self) -> str:
        path = self.run.resume_path(self.stage)
        return str(path) if path.is_file() else "none yet: the first epoch did not finish"

    def save_best(self, metric: str, model: nn.Module, record: dict[str, Any]) -> None:
        if self.best_prefix is None:
            return
        path = self.run.path / f"{self.best_prefix}best_{metric}.ckpt"
        save_checkpoint(path, model, {"stage": self.stage, "metric": metric, **record})

    def save_snapshot(self, epoch: int, model: nn.Module) -> None:
        save_checkpoint(self.run.snapshot_path(epoch), model, {"stage": self.stage, "epoch": epoch})

    def save_epoch(self, model: nn.Module, state: TrainingState) -> None:
        save_checkpoint(
            self.run.resume_path(self.stage),
            model,
            {"stage": self.stage, "fingerprint": self.fingerprint, "epoch": state.epoch},
            training=asdict(state),
        )
        self.run.write_metrics(self.stage, state.history)
        self._tensorboard(state.history[-1])

    def _tensorboard(self, row: dict[str, Any]) -> None:
        if not writes_files():
            return
        if self.writer is None:  # the first epoch of this invocation: drop events a crash left beyond it
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run.path / "tb" / self.stage), purge_step=row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{self.stage}/{key}", value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
