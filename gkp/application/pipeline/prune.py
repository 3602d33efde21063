"""The prune stage: the configured method's selection on the dense model, cut out by surgery (one-shot), or
a training-time method's training, from scratch or from the dense model, then its physical model. Writes
``plan.json`` (the plan, both models' costs, the method's notes) and ``pruned.ckpt``; ``check_pruning``
runs before any compute."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace

import torch
from torch import nn

from gkp.application.api import TrainedPruning, prune_one_shot, prune_while_training
from gkp.application.catalog import PRUNING_METHODS, build_model
from gkp.application.checkpoints.io import checkpoint_payload, model_from_payload, read_checkpoint, save_checkpoint
from gkp.application.pipeline.context import Context, load_run_model, new_model
from gkp.application.pipeline.stages import model_file
from gkp.application.pipeline.training import method_snapshots, train_stage
from gkp.foundation.contracts import (
    ModelSpec,
    Phase,
    PruningContext,
    PruningMethod,
    Recipe,
    Selection,
    TrainingHooks,
    model_spec,
)
from gkp.foundation.errors import CheckpointError, ConfigError, PruningError
from gkp.foundation.files import write_json_atomic
from gkp.foundation.seeding import derive_seed, seed_everything
from gkp.mechanisms.counting import Cost, measure
from gkp.mechanisms.data.splits import calibration_batches
from gkp.mechanisms.engine.evaluate import evaluate
from gkp.mechanisms.engine.train import FitOutcome

log = logging.getLogger(__name__)


def prune(ctx: Context) -> None:
    """The prune stage: one-shot, or while training for a training-time method."""
    method = PRUNING_METHODS.get(ctx.exp.prune.method)
    if method.training is not None:
        _prune_while_training(ctx, method)
        return
    dense = load_run_model(ctx, "dense")
    pruned = prune_one_shot(dense, ctx.exp.prune, pruning_context(ctx))
    notes = {"select_seconds": round(pruned.seconds, 3)}
    _save_pruned(ctx, dense, pruned.selection, pruned.model, notes, "dense")


def pruning_context(ctx: Context) -> PruningContext:
    """The snapshots, calibration images and budget refinements a method may read."""
    prune = ctx.exp.prune
    seed = derive_seed(ctx.exp.seed, "calibration")
    return PruningContext(
        snapshots=lambda epoch: read_checkpoint(ctx.run.snapshot_path(epoch))["state_dict"],
        calibration=lambda: calibration_batches(
            ctx.data.train, prune.calibration.batches, prune.calibration.batch_size, seed
        ),
        rates=prune.rates,
        target_macs=prune.target_macs,
        input_size=ctx.data.image_size,
    )


def _save_pruned(
    ctx: Context, source: nn.Module, selection: Selection, pruned: nn.Module, notes: dict, source_name: str
) -> None:
    """Write ``plan.json`` (the pruned model's plan, the costs of ``source``, named ``source_name``, and of
    the pruned model, and ``notes``) and the pruned model."""
    source_cost, pruned_cost = measure(source, ctx.data.image_size), measure(pruned, ctx.data.image_size)
    accuracy = _benign_accuracy(ctx, pruned, "pruned eval")
    log.info(
        "prune: %s; %s -> %s; test accuracy %.2f%%",
        ctx.exp.prune.method,
        source_cost.describe(),
        pruned_cost.describe(),
        100 * accuracy,
    )
    metadata = {
        **notes,
        source_name: _costs(ctx, source, source_cost),
        "pruned": _costs(ctx, pruned, pruned_cost),
        "test_accuracy_before_finetune": accuracy,
        **({"selection": selection.notes} if selection.notes else {}),
    }
    write_json_atomic(ctx.run.path / "plan.json", {**model_spec(pruned).plan, "metadata": metadata})
    save_checkpoint(ctx.run.path / model_file("pruned"), pruned, {"stage": "prune", "input_size": ctx.data.image_size})


def _costs(ctx: Context, model: nn.Module, cost: Cost) -> dict[str, int]:
    """A model's params and MACs, in the authors' count too, and in the method's own where it has one."""
    costs = {**asdict(cost), "authors_macs": measure(model, ctx.data.image_size, "authors").macs}
    count = PRUNING_METHODS.get(ctx.exp.prune.method).count
    return {**costs, "method_macs": count(model, ctx.data.image_size)} if count else costs


def _benign_accuracy(ctx: Context, model: nn.Module, description: str) -> float:
    report = evaluate(
        model,
        ctx.data.test,
        batch_size=ctx.exp.data.eval_batch_size,
        seed=ctx.exp.seed,
        description=description,
        options=ctx.exp.eval,
    )
    return report.benign.accuracy


# ------------------------------------------------------------------------------------------- training time


def _method_training(ctx: Context, method: PruningMethod, model: nn.Module) -> tuple[list[Phase], TrainingHooks]:
    prune = ctx.exp.prune
    recipe = Recipe.of(getattr(ctx.exp, prune.during))
    return method.training.build(model, prune.rate, prune.params, pruning_context(ctx), recipe)


def _prune_while_training(ctx: Context, method: PruningMethod) -> None:
    """Train with the method's phases and hooks (from scratch or from the dense model, as ``prune.during``
    says), then keep the physical model: the one the method's ``finalize`` builds, or the trained model's
    zeroed filters cut out (the model as trained is then kept too, as ``masked``, saved before the cut)."""
    exp = ctx.exp
    seed_everything(exp.seed)
    model = new_model(ctx).to(ctx.device) if exp.prune.during == "train" else load_run_model(ctx, "dense")
    dense = model_spec(model)
    recipe = Recipe.of(getattr(exp, exp.prune.during))
    own_modules = method.training.changes_structure

    def train(model: nn.Module, phases: list[Phase], hooks: TrainingHooks) -> FitOutcome:
        outcome = train_stage(ctx, "prune", exp.prune.during, model, phases, hooks, keep_best=not own_modules)
        if method.training.finalize is None:
            metadata = {"stage": "prune", "input_size": ctx.data.image_size, "final": outcome.final}
            save_checkpoint(ctx.run.path / model_file("masked"), model, metadata)
        return outcome

    result = prune_while_training(model, exp.prune, pruning_context(ctx), recipe, train)
    if method.training.finalize is not None:
        pruned = _rebuildable(method, result, dense)
        architecture = build_model(dense.arch, **dense.args).to(ctx.device)
        _save_pruned(ctx, architecture, result.selection, pruned, {"trained": exp.prune.during}, "dense")
        return
    notes = {"trained": exp.prune.during, **_masked_physical_gap(ctx, result.trained, result.pruned)}
    _save_pruned(ctx, result.trained, result.selection, result.pruned, notes, "masked")


def _rebuildable(method: PruningMethod, result: TrainedPruning, dense: ModelSpec) -> nn.Module:
    """The method's finalized model, carrying its plan over the ``dense`` architecture, checked to be what
    surgery rebuilds from that plan (else its checkpoint could not be read back)."""
    pruned = result.pruned
    pruned.gkp_spec = replace(dense, plan=result.plan.to_dict())
    try:
        model_from_payload(checkpoint_payload(pruned), f"{method.name}'s finalized model")
    except CheckpointError as error:
        raise PruningError(
            f"{method.name}: its finalize returned a model that its plan does not rebuild ({error}); "
            "the pruned checkpoint would not load"
        ) from error
    return pruned


def _masked_physical_gap(ctx: Context, masked: nn.Module, pruned: nn.Module) -> dict[str, float]:
    """How far the physical model is from the masked one as trained: exactly equal where the method zeroed
    whole channels (BatchNorm included), not where it left the BatchNorm shift of a removed channel
    active. The largest logit difference on the first test batch, and the masked model's accuracy."""
    split = ctx.data.test
    count = min(ctx.exp.data.eval_batch_size, split.num_samples)
    (x, _), *_ = split.take(torch.arange(count), count)
    masked.eval()
    pruned.eval()
    with torch.no_grad():
        gap = (masked(x) - pruned(x)).abs().max().item()
    log.info("prune: the physical model's logits differ from the masked model's by up to %.3g", gap)
    return {"masked_test_accuracy": _benign_accuracy(ctx, masked, "masked eval"), "masked_max_logit_difference": gap}


# ------------------------------------------------------------------------------------------- checks


def check_pruning(ctx: Context, will_make: frozenset[str]) -> None:
    """Before any compute: the method's feasibility on the dense model (trained here or read), its phases'
    data, its calibration images and its snapshots."""
    exp = ctx.exp
    fresh = "dense" in will_make or exp.prune.during == "train"
    model = new_model(ctx) if fresh else load_run_model(ctx, "dense")
    method = PRUNING_METHODS.get(exp.prune.method, "prune.method")
    method.check(model, exp.prune.rate, exp.prune.params, pruning_context(ctx))
    if method.training is not None:
        phases, _ = _method_training(ctx, method, model)  # its phases must fit the section's epochs
        _check_phase_data(ctx, phases)
    if method.calibrated and ctx.data.train is None:
        raise ConfigError(
            f"prune.method: {method.name} reads calibration images from the training split, and "
            f"data '{exp.data.name}' has none here (npz: set data.train_path)"
        )
    _check_snapshots(ctx, will_make)


def _check_phase_data(ctx: Context, phases: list[Phase]) -> None:
    needing = [phase.name for phase in phases if phase.data == "val"]
    if needing and ctx.data.val is None:
        raise ConfigError(
            f"data.val_fraction: phase '{needing[0]}' of {ctx.exp.prune.method} trains on the validation "
            "fraction of the training split, and there is none; set data.val_fraction, e.g. 0.1"
        )


def _check_snapshots(ctx: Context, will_make: frozenset[str]) -> None:
    needed = method_snapshots(ctx.exp)
    trained_here = "dense" in will_make and ctx.exp.train.epochs >= max(needed, default=0)
    missing = [e for e in needed if not ctx.run.snapshot_path(e).is_file()]
    if missing and not trained_here:
        raise ConfigError(
            f"prune.method: {ctx.exp.prune.method} reads training snapshots of epochs {needed[0]}..{needed[-1]}, "
            f"and {ctx.run.path / 'snapshots'} lacks {len(missing)} of them. The train stage saves them "
            f"(with train.epochs >= {needed[-1]}); a model loaded from model.checkpoint has none"
        )
