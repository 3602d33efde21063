"""Sweeps: a grid of config overrides over one base config, run as cells that share their dense models.

A sweep spec (YAML)::

    name: table10                      # default: the spec file's name
    base: ../configs/srgkp/resnet56_r0.4375.yaml   # relative to the spec file
    out: runs/table10                  # default: runs/<name>
    dense_out: runs/paper-dense        # where its shared dense models go (default: out), so that
                                       # sweeps with the same dense models train them once
    grid:                              # config key paths and their values; the cells are the product
      prune.method: [l1, fpgm, srgkp]
      prune.rate: [0.4375, 0.625]
    cells:                             # optional: more cells, each a mapping of overrides, with
      - {prune.method: tmigkp, prune.rate: 0.4375}    # optionally its own name and base config
      - {name: fpgm, base: ../configs/paper/fpgm_resnet56.yaml}

Cells whose dense model would be trained the same way (the same train-stage fingerprint: model, data,
training recipe, seed) share one: it is trained once, in ``<dense_out>/dense-<fingerprint>``, and each such cell
starts from it (``model.checkpoint``) in its own folder ``<out>/<cell>``. Cells that need more of the
training than the dense model (a method reading training snapshots, or pruning while it trains from
scratch) run their own training. Every cell is a plain run of ``gkp run`` on the config written to
``<out>/configs/<cell>.yaml``, so rerunning the sweep continues whatever was interrupted and skips what
finished. ``--launcher local`` runs one cell per visible GPU at a time (one at a time on a CPU);
``--launcher slurm`` submits them to a SLURM cluster as job arrays (``gkp.application.launchers``).
"""

from __future__ import annotations

import copy
import csv
import itertools
import json
import re
import statistics
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from gkp.application.catalog import DATASETS, MODELS, PRUNING_METHODS, build_model
from gkp.application.config import apply_override, build_experiment, read_config
from gkp.application.launchers import (
    Job,
    SlurmOptions,
    check_launcher,
    run_locally,
    run_with_submitit_locally,
    submit_to_slurm,
    visible_gpus,
)
from gkp.application.pipeline.context import input_contents
from gkp.application.pipeline.rundir import RunDir
from gkp.application.pipeline.stages import FINGERPRINT_VERSION, RESULTS_FILE, STAGE_NAMES, stage_named
from gkp.foundation.contracts import PruningContext, Recipe
from gkp.foundation.errors import ConfigError, DataError, RunFolderError
from gkp.foundation.files import read_json_cache
from gkp.foundation.registry import did_you_mean
from gkp.foundation.schema import load_yaml, read_text, shown, to_yaml
from gkp.mechanisms.counting import measure


@dataclass
class Cell:
    """One run of the sweep: its name, resolved raw config, folder and the dense run it reads."""

    name: str
    raw: dict[str, Any]
    folder: Path
    dense: Path | None = None
    problem: str | None = None  # why it cannot run (a method that does not exist yet, say)
    trains: bool = False  # it trains its model itself (a train stage, or pruning from scratch)


@dataclass
class Sweep:
    name: str
    out: Path
    cells: list[Cell]
    dense_out: Path
    dense_runs: dict[Path, dict[str, Any]] = field(default_factory=dict)
    finished_dense: dict[str, Path] | None = None  # finished dense runs by train fingerprint (``_finished_dense``)


def _cell_name(overrides: dict[str, Any]) -> str:
    parts = [f"{key.rsplit('.', 1)[-1]}-{value}" for key, value in overrides.items()]
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", "_".join(parts)) or "base"


SPEC_PATHS = ("base", "name", "out", "dense_out")  # the spec's keys that take a file or folder name
SPEC_KEYS = (*SPEC_PATHS, "grid", "cells")


def _check_spec(spec: dict[str, Any], path: Path) -> None:
    """A sweep spec's keys are known ones (a misspelt 'grid' would sweep the base alone) and its names are
    strings."""
    for key in spec:
        if key not in SPEC_KEYS:
            raise ConfigError(
                f"{path}: unknown key '{key}'{did_you_mean(key, list(SPEC_KEYS))}; a sweep spec has "
                f"{', '.join(SPEC_KEYS)}"
            )
    for key in SPEC_PATHS:
        if key in spec and not isinstance(spec[key], str):
            raise ConfigError(f"{path}: '{key}' must be a file or folder name, got {shown(spec[key])}")


def _overrides(spec: dict[str, Any]) -> list[dict[str, Any]]:
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise ConfigError("sweep grid: a mapping of config key paths to non-empty lists of values")
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())] if grid else []
    extra = spec.get("cells") or []
    if not isinstance(extra, list) or any(not isinstance(c, dict) for c in extra):
        raise ConfigError("sweep cells: a list of mappings of config key paths to values")
    return combos + extra or [{}]


def _resolved(base: dict[str, Any], overrides: dict[str, Any], name: str) -> dict[str, Any]:
    raw = copy.deepcopy(base)
    for key, value in overrides.items():
        apply_override(raw, f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")
    raw["name"] = name
    return raw


def _shares_dense(exp) -> bool:
    """A cell can start from a shared dense model unless it trains itself or reads training snapshots."""
    if "train" not in exp.stages or exp.prune is None:
        return False
    method = PRUNING_METHODS.get(exp.prune.method)
    return not method.snapshot_epochs(exp.prune.params) and exp.prune.during != "train"


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    spec = load_yaml(read_text(path, "sweep spec"), str(path)) if path.is_file() else None
    if not isinstance(spec, dict) or "base" not in spec:
        raise ConfigError(f"{path}: a sweep spec needs 'base' (a config file) and 'grid' (see docs/running.md)")
    _check_spec(spec, path)
    name = spec.get("name") or path.stem
    out = Path(spec.get("out") or Path("runs") / name)
    base = read_config(path.parent / spec["base"])
    sweep = Sweep(name, out, [], Path(spec.get("dense_out") or out))
    for folder in {out, sweep.dense_out}:
        _check_sweep_folder(folder)
    for entry in _overrides(spec):
        overrides = {k: v for k, v in entry.items() if k not in ("name", "base")}
        cell_name = str(entry.get("name") or _cell_name(overrides))
        cell_base = read_config(path.parent / entry["base"]) if "base" in entry else base
        cell = Cell(cell_name, _resolved(cell_base, overrides, cell_name), out / cell_name)
        _attach_dense(sweep, cell)
        sweep.cells.append(cell)
    return sweep


SWEEP_FILES = ("configs", "jobs")  # what a sweep writes in its folder beside its runs


def _check_sweep_folder(folder: Path) -> None:
    """A sweep writes only into a new folder or one of runs and sweeps' files: never among other things
    (another tool's files, say), as a run never writes into a folder that is not a run folder."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"the sweep's folder {folder} is a file; set 'out' (or 'dense_out') to a folder")
    others = [
        entry.name
        for entry in (folder.iterdir() if folder.is_dir() else [])
        if not entry.name.startswith(".")
        and entry.name not in SWEEP_FILES
        and (not entry.is_dir() or RunDir(entry).holds_other_things())
    ]
    if others:
        raise ConfigError(
            f"the sweep's folder {folder} holds other things than runs ({', '.join(sorted(others)[:3])}); set "
            "'out' (or 'dense_out') to a new folder, so that nothing in it is mixed with the sweep's runs"
        )


def _attach_dense(sweep: Sweep, cell: Cell) -> None:
    """Check the cell's config, and point it at the shared dense run of its training settings."""
    method = (cell.raw.get("prune") or {}).get("method")
    if method is not None and method not in PRUNING_METHODS:
        cell.problem = f"no such method yet: {method}"
        return
    try:
        exp = build_experiment(cell.raw)
        inputs = input_contents(exp) if _shares_dense(exp) else {}
    except (ConfigError, DataError) as error:
        cell.problem = str(error)
        return
    cell.trains = "train" in exp.stages or (exp.prune is not None and exp.prune.during == "train")
    if not _shares_dense(exp):
        return
    fingerprint = stage_named("train").fingerprint(exp, inputs)  # the data's content names it too
    dense = _finished_dense(sweep, fingerprint)
    if dense is None:
        dense = sweep.dense_out / f"dense-{fingerprint[:12]}"
        sweep.dense_runs.setdefault(dense, {**cell.raw, "name": dense.name, "stages": ["train"]})
    cell.dense = dense
    cell.raw = {**cell.raw, "stages": [s for s in exp.stages if s != "train"]}
    cell.raw["model"] = {**(cell.raw.get("model") or {}), "checkpoint": str(dense / "dense.ckpt")}


def _finished_dense(sweep: Sweep, fingerprint: str) -> Path | None:
    """A run folder under the sweep's dense folder or ``runs/`` whose train stage finished with this
    fingerprint, so with this very training: its dense model is reused rather than trained again."""
    if sweep.finished_dense is None:  # looked for once per sweep
        sweep.finished_dense = _finished_dense_runs([sweep.dense_out, Path("runs")])
    return sweep.finished_dense.get(fingerprint)


def _finished_dense_runs(roots: list[Path]) -> dict[str, Path]:
    """The run folders under ``roots`` with a dense model whose train stage finished in this version of
    the fingerprints, by that fingerprint (the first found wins; folders moved aside by --restart are not
    reused)."""
    found: dict[str, Path] = {}
    for root in dict.fromkeys(roots):
        for marker in sorted(root.glob("**/state/train.done")):
            folder = marker.parent.parent
            moved_aside = any(".old-" in part for part in folder.relative_to(root).parts)
            record = read_json_cache(marker)  # a damaged marker is simply not a match
            if not moved_aside and (folder / "dense.ckpt").is_file() and record.get("version") == FINGERPRINT_VERSION:
                found.setdefault(record.get("fingerprint"), folder)
    return found


# ------------------------------------------------------------------------------------------- status


def run_status(folder: Path, stages: list[str]) -> str:
    """done (every stage finished), running (a process holds the folder), partial (some started), missing,
    or "earlier version" (a folder whose fingerprints another version of gkp wrote: not done, and refused
    when run, with how to rerun)."""
    markers = [folder / "state" / f"{stage}.done" for stage in stages]
    if RunDir(folder).holder() is not None:
        return "running"
    try:
        RunDir(folder).recorded_fingerprints()
    except RunFolderError:
        return "earlier version"
    if all(marker.is_file() for marker in markers):
        return "done"
    return "partial" if (folder / "state").is_dir() else "missing"


def epochs_left(folder: Path, raw: dict[str, Any]) -> tuple[int, float | None]:
    """(training epochs the run still has to do, the median seconds of its epochs measured so far)."""
    exp = build_experiment(raw)
    rows = []
    if (folder / "metrics.csv").is_file():
        rows = list(csv.DictReader((folder / "metrics.csv").open()))
    left = 0
    for stage in exp.stages:
        section = stage_named(stage).trains(exp)
        if section is not None and not (folder / "state" / f"{stage}.done").is_file():
            done = sum(1 for row in rows if row["stage"] == stage)
            left += max(_stage_epochs(exp, stage, section) - done, 0)
    seconds = [float(row["seconds"]) for row in rows if row.get("seconds")]
    return left, statistics.median(seconds) if seconds else None


def _stage_epochs(exp, stage: str, section: str) -> int:
    """A training stage's epochs: its section's, or the phases a training-time method makes of them (HRank's
    layers may take more)."""
    recipe = Recipe.of(getattr(exp, section))
    if stage != "prune" or exp.model.arch is None:
        return recipe.epochs
    method = PRUNING_METHODS.get(exp.prune.method)
    model = build_model(exp.model.arch, **exp.model.args)
    phases, _ = method.training.build(
        model, exp.prune.rate, exp.prune.params, PruningContext(rates=exp.prune.rates), recipe
    )
    return sum(phase.recipe.epochs for phase in phases)


# Where no epoch of a run has been timed yet, an epoch is estimated from its passes per image (forward-pass
# equivalents: 3 per trained image, 1 per prediction, 3 per attack gradient step) on one V100 GPU: each
# pass costs its MACs at V100_MACS_PER_SECOND plus PASS_OVERHEAD_SECONDS. The rate is NVIDIA's FP32
# ResNet-50 training throughput on one V100 16GB (367 images/s of 3 x 4.11G MACs; DeepLearningExamples,
# PyTorch ResNet50 v1.5 README); the overhead is what remains of the SR-GKP authors' ResNet-20 demo epoch
# on a V100 (12.5 s for 50,000 images; ../shared/specs/paper.md section 7) once its MACs are paid. A guide
# for planning: a run's measured epoch times replace it as soon as it has some.
V100_MACS_PER_SECOND = 367 * 3 * 4.11e9
PASS_OVERHEAD_SECONDS = (12.5 / 50_000 - 3 * 40.55e6 / V100_MACS_PER_SECOND) / 3


@cache
def _macs(arch: str, args: str, image_size: int | None) -> float:
    model = build_model(arch, **json.loads(args))
    return measure(model, image_size or MODELS.get(arch).input_size).macs


def estimated_epoch_seconds(exp, stage: str, section: str) -> float | None:
    """A V100's seconds for one epoch of a training stage (training plus its per-epoch evaluation), from its
    passes (see V100_MACS_PER_SECOND); None where the image counts are unknown before loading."""
    images = DATASETS.get(exp.data.name).images(exp.data)
    if images is None or exp.model.arch is None:
        return None
    cfg = getattr(exp, section)
    macs = _macs(exp.model.arch, json.dumps(exp.model.args, sort_keys=True), exp.data.image_size)
    if stage == "finetune" and exp.prune is not None:
        macs *= 1 - exp.prune.rate  # the pruned model's share, about
    adversarial_steps = getattr(cfg.adversarial.params, "steps", 1) if cfg.adversarial else 0
    passes = images[0] * 3 * (1 + adversarial_steps)
    if cfg.eval_every:
        attacks = [exp.attack(label) for label in cfg.eval_attacks]
        passes += images[1] * (1 + sum(spec.passes for spec in attacks)) / cfg.eval_every
    return passes * (macs / V100_MACS_PER_SECOND + PASS_OVERHEAD_SECONDS)


def _left(folder: Path, raw: dict[str, Any]) -> tuple[str, float | None]:
    epochs, seconds = epochs_left(folder, raw)
    if epochs == 0:
        return "-", 0.0
    if seconds is not None:
        hours = epochs * seconds / 3600
        return f"{_epochs(epochs)}, ~{hours:.1f} h", hours
    estimate = _estimated_hours(raw, folder)
    if estimate is None:
        return f"{_epochs(epochs)}, time unknown until an epoch ran", None
    return f"{_epochs(epochs)}, ~{estimate:.1f} GPU-h (estimated)", estimate


def _epochs(count: int) -> str:
    return f"{count} epoch{'s' if count != 1 else ''}"


def _estimated_hours(raw: dict[str, Any], folder: Path) -> float | None:
    """The training left, estimated stage by stage from MACs (no epoch of the run timed yet)."""
    exp = build_experiment(raw)
    total = 0.0
    for stage in exp.stages:
        section = stage_named(stage).trains(exp)
        if section is None or (folder / "state" / f"{stage}.done").is_file():
            continue
        seconds = estimated_epoch_seconds(exp, stage, section)
        if seconds is None:
            return None
        total += _stage_epochs(exp, stage, section) * seconds
    return total / 3600


def _start(cell: Cell, sweep: Sweep) -> str:
    """Where a cell's model comes from: a shared dense run (one of the sweep's, or a finished run it
    reuses), its own training, or a given checkpoint."""
    if cell.dense is not None:
        return f"from {cell.dense.name}" if cell.dense in sweep.dense_runs else f"from {cell.dense} (finished)"
    if cell.trains:
        return "trains its own model"
    return f"from {(cell.raw.get('model') or {}).get('checkpoint')}"


def _runs(sweep: Sweep) -> list[tuple[Path, dict[str, Any] | None, str]]:
    """(folder, raw config or None where it cannot run, where it starts from) of every run of the sweep."""
    runs = [(folder, raw, "shared dense model") for folder, raw in sweep.dense_runs.items()]
    for cell in sweep.cells:
        runs.append((cell.folder, None if cell.problem else cell.raw, cell.problem or _start(cell, sweep)))
    return runs


def hours_left(sweep: Sweep) -> float:
    """The training the sweep's runs have left, in hours (measured epoch times, else estimated GPU-hours)."""
    return sum(_left(folder, raw)[1] or 0.0 for folder, raw, _ in _runs(sweep) if raw is not None)


def status_table(sweep: Sweep) -> str:
    """Every run with its status, the training left and, where an epoch has been measured, its time."""
    rows, total, unknown = [("run", "status", "left", "detail")], 0.0, 0
    for folder, raw, detail in _runs(sweep):
        if raw is None:
            rows.append((folder.name, "cannot run", "-", detail))
            continue
        left, hours = _left(folder, raw)
        total, unknown = total + (hours or 0.0), unknown + (hours is None)
        rows.append((folder.name, run_status(folder, raw.get("stages", list(STAGE_NAMES))), left, detail))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join([*(row[i].ljust(widths[i]) for i in range(3)), row[3]]) for row in rows]
    estimate = f"about {total:.1f} h of training left (measured epoch times, else estimated GPU-hours)"
    return "\n".join([*lines, estimate + (f", plus {unknown} run(s) of unknown size" if unknown else "")])


# ------------------------------------------------------------------------------------------- running


def _write_config(sweep: Sweep, name: str, raw: dict[str, Any]) -> Path:
    path = sweep.out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(raw))
    return path


def _to_start(job: Job, stages: list[str]) -> bool:
    """Whether the sweep starts ``job``: not when it is done, nor while another process runs it."""
    holder = RunDir(job.folder).holder()
    if holder is not None:  # (a process taking it after this look is refused by the run itself)
        print(f"sweep: {job.name} is running in {holder}; not started again", flush=True)
        return False
    return run_status(job.folder, stages) not in ("done", "running")


def _not_done(sweep: Sweep) -> tuple[list[Job], list[Job]]:
    """The jobs left: shared dense models, and cells (with the dense run each starts from)."""
    dense = [Job(f.name, _write_config(sweep, f.name, raw), f) for f, raw in sweep.dense_runs.items()]
    dense = [job for job in dense if _to_start(job, ["train"])]
    cells = [
        job
        for c in sweep.cells
        if not c.problem
        for job in [Job(c.name, _write_config(sweep, c.name, c.raw), c.folder, c.dense)]
        if _to_start(job, c.raw.get("stages", list(STAGE_NAMES)))
    ]
    return dense, cells


def _dense_done(folder: Path) -> bool:
    return run_status(folder, ["train"]) == "done"


CPU_HOURS_UNASKED = 1.0  # more estimated training than this on a machine without a GPU needs --allow-cpu


def local_devices() -> str:
    """What a local sweep's runs would use, in words (the dry run says it)."""
    gpus = [gpu for gpu in visible_gpus() if gpu is not None]
    return (
        f"{len(gpus)} GPU(s), one run on each at a time" if gpus else "the CPU (no GPU is visible), one run at a time"
    )


def run_sweep(
    sweep: Sweep, launcher: str = "local", slurm: SlurmOptions | None = None, allow_cpu: bool = False
) -> list[str]:
    """Train the shared dense models, then run every cell that can run, with ``launcher`` (``local``,
    ``slurm`` or ``submitit-local``, see ``gkp.application.launchers``); returns the names of the failed
    runs (none known yet when the jobs went to SLURM). A local sweep of more than an hour of estimated
    training on a machine without a GPU asks for ``allow_cpu`` first."""
    check_launcher(launcher)
    if launcher == "local" and visible_gpus() == [None] and not allow_cpu:
        hours = hours_left(sweep)
        if hours > CPU_HOURS_UNASKED:
            raise ConfigError(
                f"sweep {sweep.name}: no GPU is visible, and its runs have about {hours:.0f} GPU-hours of training "
                "left, which would take far longer on the CPU; pass --allow-cpu to run them here anyway, or "
                "--launcher slurm on a cluster"
            )
    dense, cells = _not_done(sweep)
    if launcher == "local":
        return run_locally(dense, cells, _dense_done, visible_gpus())
    logs = sweep.out / "jobs"
    if launcher == "slurm":
        submit_to_slurm(dense, cells, _dense_done, logs, slurm or SlurmOptions())
        return []
    return run_with_submitit_locally(dense, cells, _dense_done, logs, slurm or SlurmOptions())


def results_of(sweep: Sweep) -> list[Path]:
    """The cells' folders that hold results."""
    return [cell.folder for cell in sweep.cells if (cell.folder / RESULTS_FILE).is_file()]
