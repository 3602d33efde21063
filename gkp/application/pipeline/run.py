"""The pipeline runner: ``run_experiment`` runs the stages of ``gkp.application.pipeline.stages.STAGES`` a config asks for.

It resolves the device (in a run of several processes started by ``torchrun``, joins their group: see
``gkp.mechanisms.engine.distributed``), loads the data, checks that every stage it will run has its inputs and that its
settings are feasible (before any compute), prepares the run folder, then runs the stages in order.
Finished stages are skipped, interrupted ones resume from their last epoch.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from gkp.application.catalog import load_data
from gkp.application.checkpoints.io import read_checkpoint
from gkp.application.checkpoints.zoo import local_checkpoint
from gkp.application.config import Experiment
from gkp.application.pipeline.rundir import RunDir
from gkp.application.pipeline.stages import RESULTS_FILE, STAGES, models_made_by, stage_named, trains
from gkp.application.pipeline.steps import Context, require_model
from gkp.foundation.errors import ConfigError
from gkp.mechanisms.engine import distributed
from gkp.mechanisms.engine.device import resolve_device, set_determinism

log = logging.getLogger(__name__)


def _check_model_fits_data(ctx: Context) -> None:
    classes = ctx.exp.model.num_classes
    if classes is not None and classes < ctx.data.num_classes:
        raise ConfigError(
            f"model.num_classes: {classes} classes, but data '{ctx.exp.data.name}' has labels up to "
            f"{ctx.data.num_classes - 1}; leave model.num_classes unset to use the data's class count"
        )
    if not ctx.exp.model.checkpoint:
        return
    payload = read_checkpoint(local_checkpoint(ctx.exp.model.checkpoint))
    if ctx.exp.model.arch is not None and ctx.exp.model.arch != payload["arch"]:
        raise ConfigError(
            f"model.arch: the config says {ctx.exp.model.arch} but model.checkpoint holds "
            f"{payload['arch']}; drop model.arch (the checkpoint names its own) or fix it"
        )
    classes = payload["arch_args"].get("num_classes")
    if ctx.exp.model.num_classes is not None and classes is not None and classes != ctx.exp.model.num_classes:
        raise ConfigError(
            f"model.num_classes: the config says {ctx.exp.model.num_classes} but model.checkpoint "
            f"{ctx.exp.model.checkpoint} predicts {classes} classes; drop model.num_classes (the checkpoint "
            "names its own) or fix it"
        )
    if classes is not None and classes < ctx.data.num_classes:
        raise ConfigError(
            f"model.checkpoint: {ctx.exp.model.checkpoint} predicts {classes} classes but "
            f"data '{ctx.exp.data.name}' has labels up to {ctx.data.num_classes - 1}"
        )


def preflight(ctx: Context, stages: tuple[str, ...]) -> None:
    """Fail before any compute when a stage would lack its input or its settings cannot work."""
    _check_model_fits_data(ctx)
    will_make = models_made_by(stages, ctx.exp)
    for name in stages:
        stage = stage_named(name)
        if trains(name, ctx.exp) and ctx.data.train is None:
            raise ConfigError(f"data: the {name} stage trains, and data '{ctx.exp.data.name}' has no training split")
        stage.preflight(ctx, will_make)
        for model in stage.reads(ctx.exp):
            if model not in will_make and not (model == "final" and will_make):
                require_model(ctx, model)


def run_experiment(
    exp: Experiment, out: str | Path | None = None, stages: tuple[str, ...] | None = None, restart: bool = False
) -> dict[str, Any] | None:
    """Run ``stages`` (default: the config's) of ``exp`` in ``out`` (default runs/<name>); returns
    the results of the eval stage when it ran or had run (in a run of several processes: in rank 0)."""
    stages = tuple(stages or exp.stages)
    device = distributed.join_group(resolve_device(exp.device))
    try:
        return _run_in(exp, out, stages, restart, device)
    finally:
        distributed.leave_group()


def _run_in(
    exp: Experiment, out: str | Path | None, stages: tuple[str, ...], restart: bool, device
) -> dict[str, Any] | None:
    if distributed.shard().rank != 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the story
    set_determinism(exp.deterministic)
    run = RunDir(out or Path("runs") / exp.name)
    with distributed.rank_zero_first():  # downloads, fetched checkpoints, the folder: the others then read them
        if restart:
            run.check_usable()  # --restart moves aside a run folder, never a user's file or folder
            run.move_aside()
        ctx = Context(exp, run, device, load_data(exp.data, device, exp.model.num_classes))
        preflight(ctx, stages)
        plain = exp.to_dict()
        repeatable = frozenset(stage.name for stage in STAGES if stage.repeatable)
        run.prepare(plain, {stage.name: stage.fingerprint(plain) for stage in STAGES}, device, repeatable)
    log.info("run folder %s on %s", run.path, device)
    for name in stages:
        _run_stage(ctx, name)
    results_file = run.path / RESULTS_FILE
    ran_eval = any(RESULTS_FILE in stage_named(name).files for name in stages)
    reports = ran_eval and results_file.is_file() and distributed.shard().rank == 0  # rank 0 reports
    return json.loads(results_file.read_text()) if reports else None


def _run_stage(ctx: Context, name: str) -> None:
    distributed.barrier()  # in a run of several processes, all see what rank 0 wrote before this stage
    if ctx.run.is_done(name):
        log.info("%s: already done in %s, skipped", name, ctx.run.path)
        return
    start = time.perf_counter()
    log.info("%s: starting", name)
    ctx.run.mark_started(name, ctx.fingerprint(name))
    stage_named(name).run(ctx)
    ctx.run.mark_done(name, ctx.fingerprint(name))
    log.info("%s: done in %.1fs", name, time.perf_counter() - start)
