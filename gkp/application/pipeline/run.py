"""Running a config: ``run_experiment`` checks everything it can before any compute, prepares the run folder,
then ``run_stages`` runs the stages the config asks for, in pipeline order, each an ordinary function:

    train (training.train) -> prune (prune.prune) -> finetune (training.finetune) -> eval (evaluation.evaluate_models)

Finished stages are skipped, interrupted ones resume from their last epoch. In a run of several processes
started by ``torchrun``, the processes join one group (``gkp.mechanisms.engine.distributed``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from gkp.application.catalog import load_data
from gkp.application.checkpoints.io import read_checkpoint
from gkp.application.checkpoints.zoo import local_checkpoint
from gkp.application.config import Experiment
from gkp.application.pipeline.context import Context, input_contents, new_model, require_model
from gkp.application.pipeline.evaluation import evaluate_models
from gkp.application.pipeline.prune import check_pruning, prune
from gkp.application.pipeline.rundir import RunDir
from gkp.application.pipeline.stages import EVAL, FINETUNE, PRUNE, RESULTS_FILE, STAGES, TRAIN, Stage, models_made_by
from gkp.application.pipeline.training import finetune, train
from gkp.foundation.errors import ConfigError, first_line
from gkp.foundation.files import read_json_mapping
from gkp.mechanisms.engine import distributed
from gkp.mechanisms.engine.device import resolve_device, set_determinism

log = logging.getLogger(__name__)


def run_stages(ctx: Context, names: tuple[str, ...]) -> None:
    """The pipeline: each stage of ``names``, in this order."""
    run_stage(ctx, TRAIN, train, names)
    run_stage(ctx, PRUNE, prune, names)
    run_stage(ctx, FINETUNE, finetune, names)
    run_stage(ctx, EVAL, evaluate_models, names)


def run_stage(ctx: Context, stage: Stage, work: Callable[[Context], None], names: tuple[str, ...]) -> None:
    """Run one stage, if asked for and not done already, between its started and done markers."""
    if stage.name not in names:
        return
    distributed.barrier()  # in a run of several processes, all see what rank 0 wrote before this stage
    if ctx.run.is_done(stage.name):
        log.info("%s: already done in %s, skipped", stage.name, ctx.run.path)
        return
    start = time.perf_counter()
    log.info("%s: starting", stage.name)
    ctx.run.mark_started(stage.name, ctx.fingerprint(stage.name))
    work(ctx)
    ctx.run.mark_done(stage.name, ctx.fingerprint(stage.name))
    log.info("%s: done in %.1fs", stage.name, time.perf_counter() - start)


def run_experiment(
    exp: Experiment, out: str | Path | None = None, stages: tuple[str, ...] | None = None, restart: bool = False
) -> dict[str, Any] | None:
    """Run ``stages`` (default: the config's) of ``exp`` in ``out`` (default runs/<name>); returns
    the results of the eval stage when it ran or had run (in a run of several processes: in rank 0)."""
    names = tuple(stages or exp.stages)
    device = distributed.join_group(resolve_device(exp.device))
    try:
        return _run_in(exp, out, names, restart, device)
    finally:
        distributed.leave_group()


def _run_in(exp: Experiment, out: str | Path | None, names: tuple[str, ...], restart: bool, device):
    if distributed.shard().rank != 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the story
    set_determinism(exp.deterministic)
    run = RunDir(out or Path("runs") / exp.name)
    with ExitStack() as held:  # the folder is this process's until the run ends (``RunDir.held``)
        with distributed.rank_zero_first():  # downloads, fetched checkpoints, the folder: the others then read
            if restart and run.path.exists():  # moves aside a run folder no other process holds, never a user's
                with run.held():
                    run.move_aside()
            ctx = checked_context(exp, run, names, device)
            held.enter_context(run.held())  # before anything is written in it
            fingerprints, repeatable = _fingerprints(ctx)
            run.prepare(exp.to_dict(), fingerprints, device, repeatable, ctx.inputs)
        log.info("run folder %s on %s", run.path, device)
        run_stages(ctx, names)
    results_file = run.path / RESULTS_FILE
    reports = EVAL.name in names and results_file.is_file() and distributed.shard().rank == 0  # rank 0 reports
    recovery = "delete it and evaluate again (gkp eval with the same config; the trained models are kept)"
    return read_json_mapping(results_file, recovery) if reports else None


# ------------------------------------------------------------------------------------------- before any compute


def checked_context(exp: Experiment, run: RunDir, names: tuple[str, ...], device) -> Context:
    """The run's context, its data loaded, once everything that can be checked before any compute is."""
    data = load_data(exp.data, device, exp.model.num_classes)
    ctx = Context(exp, run, device, data, input_contents(exp))
    preflight(ctx, names)
    return ctx


def check_experiment(exp: Experiment, out: str | Path | None = None) -> None:
    """What ``run_experiment`` checks before any compute, without training, evaluating or writing in the run
    folder: the data loads, each stage has its inputs, the pruning method fits the model at its rate, the
    run folder can hold this run. Like a run, it may download the dataset, fetch a zoo checkpoint and record
    digests in this machine's caches."""
    run = RunDir(out or Path("runs") / exp.name)
    ctx = checked_context(exp, run, tuple(exp.stages), torch.device("cpu"))
    run.check_fits(exp.to_dict(), *_fingerprints(ctx), ctx.inputs)


def _fingerprints(ctx: Context) -> tuple[dict[str, str], frozenset[str]]:
    """Each stage's fingerprint, and the stages that may run again when their own settings alone change."""
    fingerprints = {stage.name: ctx.fingerprint(stage.name) for stage in STAGES}
    return fingerprints, frozenset(stage.name for stage in STAGES if stage.repeatable)


def preflight(ctx: Context, names: tuple[str, ...]) -> None:
    """Fail before any compute when a stage would lack its input or its settings cannot work."""
    _check_model_fits_data(ctx)
    _check_new_model_runs(ctx)
    will_make = models_made_by(names, ctx.exp)
    for stage in STAGES:
        if stage.name not in names:
            continue
        if stage.trains(ctx.exp) and ctx.data.train is None:
            raise ConfigError(
                f"data: the {stage.name} stage trains, and data '{ctx.exp.data.name}' has no training split"
            )
        for model in stage.reads(ctx.exp):
            if model not in will_make and not (model == "final" and will_make):
                require_model(ctx, model)
    if PRUNE.name in names:
        check_pruning(ctx, will_make)


def _check_new_model_runs(ctx: Context) -> None:
    """The model a run builds anew (unless it reads model.checkpoint) must build, take one of the data's
    images and give a logit per class: model.args, data.mean, data.std and the image size meet here. The
    stages seed the generators afresh, so building it here changes nothing they compute."""
    if ctx.exp.model.checkpoint:
        return
    arch, data = ctx.exp.model.arch, ctx.exp.data.name
    image = next(iter(ctx.data.test.batches(1)))[0].cpu()
    try:
        with torch.no_grad():
            logits = new_model(ctx).eval()(image)
    except (ValueError, RuntimeError, TypeError, IndexError) as error:
        raise ConfigError(
            f"model: {arch} cannot be built for data '{data}' or run on its {tuple(image.shape[1:])} images "
            f"({first_line(error)}); check model.args, data.mean, data.std and the image size"
        ) from error
    if logits.shape[-1] < ctx.data.num_classes:
        raise ConfigError(
            f"model.args.num_classes: {arch} predicts {logits.shape[-1]} classes, but data '{data}' has labels "
            f"up to {ctx.data.num_classes - 1}; leave the class count to the data"
        )


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
