"""What each stage of the pipeline does (the table of stages is ``gkp.pipeline.STAGES``): train, prune,
finetune and evaluate, each a function of the run ``Context``. A stage reads its inputs from the run
folder and writes its outputs atomically, so a stage run alone (``gkp prune CONFIG``) gives what it gives
inside ``gkp run``; the ``check_*`` functions run before any compute.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gkp.catalog import PRUNING_METHODS, model_for_data
from gkp.checkpoint import load_model, read_checkpoint, save_checkpoint
from gkp.contracts import PruningContext, Selection
from gkp.counting import measure
from gkp.data import DataBundle
from gkp.data.splits import calibration_batches
from gkp.engine.device import use_channels_last
from gkp.engine.evaluate import evaluate
from gkp.engine.train import FitOutcome, fit
from gkp.errors import ConfigError, RunFolderError
from gkp.layers.forms import choose_forms
from gkp.pipeline import RESULTS_FILE, SAVED_MODELS, TRAINING_STAGES, model_file, produced_by, stage_named
from gkp.pruning.plan import Plan
from gkp.pruning.surgery import apply as apply_plan
from gkp.rundir import RunDir, StageStore, write_json_atomic
from gkp.schema import to_plain
from gkp.seeding import derive_seed, seed_everything

if TYPE_CHECKING:
    from gkp.config import Experiment

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every stage works with: the experiment, its run folder, the device and the loaded data."""

    exp: Experiment
    run: RunDir
    device: torch.device
    data: DataBundle

    def fingerprint(self, stage: str) -> str:
        return stage_named(stage).fingerprint(self.exp.to_dict())


# ------------------------------------------------------------------ models and their files


def _own_model(ctx: Context, name: str) -> Path | None:
    """The model ``name`` as its stage saved it; the dense model may also be ``model.checkpoint``."""
    candidates = [ctx.run.path / model_file(name)]
    if name == "dense" and ctx.exp.model.checkpoint:
        candidates.append(Path(ctx.exp.model.checkpoint))
    return next((p for p in candidates if p.is_file()), None)


def model_path(ctx: Context, name: str) -> Path | None:
    """The checkpoint behind an eval model name, if it exists: ``final`` is the newest model along the
    pipeline (fine-tuned, else pruned, else dense); best-epoch models are their files."""
    if name != "final":
        return _own_model(ctx, name)
    return next((p for p in (_own_model(ctx, m) for m in reversed(SAVED_MODELS)) if p is not None), None)


def require_model(ctx: Context, name: str) -> Path:
    path = model_path(ctx, name)
    if path is None:
        stage = produced_by(name)
        raise RunFolderError(
            f"no '{name}' model in {ctx.run.path}: run the {stage} stage first "
            f"(gkp {stage} CONFIG){' or set model.checkpoint' if name == 'dense' else ''}"
        )
    return path


def new_model(ctx: Context) -> nn.Module:
    """A freshly initialised model for the configured arch, sized and normalised for the data."""
    return model_for_data(ctx.exp.model.arch, ctx.data, ctx.exp.model.num_classes, ctx.exp.model.args)


def fastest_forms(ctx: Context, model: nn.Module, batch_size: int, train: bool, channels_last: bool) -> None:
    """Run each layer that has several equivalent forms in its fastest one on this device and batch,
    timed in the memory format it will run in. The forms sum in different orders, and timings vary, so
    deterministic runs keep the default forms."""
    if not ctx.exp.deterministic:
        choose_forms(model, ctx.data.image_size, batch_size, train=train, channels_last=channels_last)


# ------------------------------------------------------------------ train and finetune


def _summary(outcome: FitOutcome, cfg, best_prefix: str) -> dict[str, Any]:
    best = {m: {**r, "checkpoint": f"{best_prefix}best_{m}.ckpt"} for m, r in outcome.best.items()}
    return {"select_on": cfg.select_on, "epochs": cfg.epochs, "best": best, "final": outcome.final}


def _train_and_save(ctx: Context, stage: str, model: nn.Module, snapshot_epochs: frozenset[int] = frozenset()) -> None:
    """Run ``fit`` for a training stage, then save its final model and its best-epoch summary."""
    cfg = getattr(ctx.exp, stage)
    best_prefix = stage_named(stage).best_prefix
    store = StageStore(ctx.run, stage, ctx.fingerprint(stage), best_prefix)
    try:
        outcome = fit(
            model,
            cfg,
            stage=stage,
            train_split=ctx.data.train,
            select_split=ctx.data.val if cfg.select_on == "val" else ctx.data.test,
            attack_specs=[ctx.exp.attack(label) for label in cfg.eval_attacks],
            batch_size=ctx.exp.data.batch_size,
            eval_batch_size=ctx.exp.data.eval_batch_size,
            eval_options=ctx.exp.eval,
            seed=ctx.exp.seed,
            store=store,
            snapshot_epochs=snapshot_epochs,
        )
    finally:
        store.close()
    metadata = {"stage": stage, "input_size": ctx.data.image_size, "final": outcome.final}
    save_checkpoint(ctx.run.path / stage_named(stage).saves[1], model, metadata)
    write_json_atomic(ctx.run.path / f"{stage}.json", _summary(outcome, cfg, best_prefix))


def method_snapshots(exp: Experiment) -> tuple[int, ...]:
    """Training snapshots the configured pruning method reads (TMI-GKP's epochs 35..70, say)."""
    if exp.prune is None:
        return ()
    return PRUNING_METHODS.get(exp.prune.method).snapshot_epochs(exp.prune.params)


def train(ctx: Context) -> None:
    seed_everything(ctx.exp.seed)
    snapshots = frozenset(ctx.exp.train.snapshot_epochs) | frozenset(method_snapshots(ctx.exp))
    _train_and_save(ctx, "train", new_model(ctx).to(ctx.device), snapshots)


def finetune(ctx: Context) -> None:
    seed_everything(ctx.exp.seed)
    model, _ = load_model(require_model(ctx, "pruned"), ctx.device)
    channels_last = use_channels_last(ctx.exp.finetune.channels_last, ctx.device)
    fastest_forms(ctx, model, ctx.exp.data.batch_size, train=True, channels_last=channels_last)
    _train_and_save(ctx, "finetune", model)


# ------------------------------------------------------------------ prune


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


def _select(ctx: Context, dense: nn.Module) -> tuple[Selection, float]:
    """The configured method's selection on the dense model, and the seconds it took."""
    prune = ctx.exp.prune
    start = time.perf_counter()
    selection = PRUNING_METHODS.get(prune.method).select(dense, prune.rate, prune.params, pruning_context(ctx))
    return selection, time.perf_counter() - start


def prune(ctx: Context) -> None:
    exp = ctx.exp
    dense, _ = load_model(require_model(ctx, "dense"), ctx.device)
    selection, seconds = _select(ctx, dense)
    rate = None if exp.prune.target_macs is not None else exp.prune.rate  # a MACs target replaces the rate
    plan = Plan(exp.prune.method, rate, selection.layers, to_plain(exp.prune.params))
    pruned = apply_plan(dense, plan)
    dense_cost, pruned_cost = measure(dense, ctx.data.image_size), measure(pruned, ctx.data.image_size)
    before = evaluate(
        pruned,
        ctx.data.test,
        batch_size=exp.data.eval_batch_size,
        seed=exp.seed,
        description="pruned eval",
        options=exp.eval,
    )
    log.info(
        "prune: %s selected in %.2fs; %s -> %s; test accuracy before fine-tuning %.2f%%",
        exp.prune.method,
        seconds,
        dense_cost.describe(),
        pruned_cost.describe(),
        100 * before.benign.accuracy,
    )
    metadata = {
        "select_seconds": round(seconds, 3),
        "dense": asdict(dense_cost),
        "pruned": asdict(pruned_cost),
        "test_accuracy_before_finetune": before.benign.accuracy,
        **({"selection": selection.notes} if selection.notes else {}),
    }
    write_json_atomic(ctx.run.path / "plan.json", {**plan.to_dict(), "metadata": metadata})
    save_checkpoint(ctx.run.path / model_file("pruned"), pruned, {"stage": "prune", "input_size": ctx.data.image_size})


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


def check_pruning(ctx: Context, will_make: frozenset[str]) -> None:
    """The method's feasibility on the dense model (trained here or read), its data and its snapshots."""
    exp = ctx.exp
    model = new_model(ctx) if "dense" in will_make else load_model(require_model(ctx, "dense"))[0]
    method = PRUNING_METHODS.get(exp.prune.method, "prune.method")
    method.check(model, exp.prune.rate, exp.prune.params, pruning_context(ctx))
    if method.calibrated and ctx.data.train is None:
        raise ConfigError(
            f"prune.method: {method.name} reads calibration images from the training split, and "
            f"data '{exp.data.name}' has none here (npz: set data.train_path)"
        )
    _check_snapshots(ctx, will_make)


# ------------------------------------------------------------------ eval


def _evaluate_model(ctx: Context, name: str) -> dict[str, Any]:
    path = require_model(ctx, name)
    model, _ = load_model(path, ctx.device)
    batch_size = ctx.exp.data.eval_batch_size
    fastest_forms(ctx, model, batch_size, train=bool(ctx.exp.attacks), channels_last=ctx.exp.eval.channels_last)
    report = evaluate(
        model,
        ctx.data.test,
        ctx.exp.attacks,
        batch_size=batch_size,
        seed=ctx.exp.seed,
        description=f"eval {name}",
        options=ctx.exp.eval,
    )
    cost = measure(model, ctx.data.image_size)
    ctx.run.write_per_sample(name, report.per_sample)
    return {"model": name, "checkpoint": str(path), "params": cost.params, "macs": cost.macs, **report.to_dict()}


def evaluate_models(ctx: Context) -> None:
    entries = [_evaluate_model(ctx, name) for name in ctx.exp.eval.models]
    training = {
        stage: json.loads((ctx.run.path / f"{stage}.json").read_text())
        for stage in TRAINING_STAGES
        if (ctx.run.path / f"{stage}.json").is_file()
    }
    results = {
        "name": ctx.exp.name,
        "device": str(ctx.device),
        **entries[0],
        "other_models": entries[1:],
        "training": training,
    }
    write_json_atomic(ctx.run.path / RESULTS_FILE, results)
