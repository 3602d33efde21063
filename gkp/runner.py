"""The pipeline: train -> prune -> finetune -> eval, each stage a function of the run context.

``run_experiment`` resolves the device, loads the data, checks that every stage it will run has its
inputs and that the pruning settings are feasible (before any compute), prepares the run folder, then
runs the stages. Finished stages are skipped, interrupted ones resume from their last epoch.

Stage outputs in the run folder: ``dense.ckpt`` (train), ``plan.json`` + ``pruned.ckpt`` (prune),
``finetuned.ckpt`` + ``best_<metric>.ckpt`` + ``finetune.json`` (finetune), ``results.json`` (eval).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gkp.checkpoint import load_model, read_checkpoint, save_checkpoint
from gkp.config import Experiment
from gkp.counting import measure
from gkp.data import DataBundle, load_data
from gkp.data.splits import calibration_batches
from gkp.engine.device import resolve_device, set_determinism, use_channels_last
from gkp.engine.evaluate import evaluate
from gkp.engine.train import FitOutcome, fit
from gkp.errors import ConfigError, RunFolderError
from gkp.grouped.conv import GroupedKernelConv2d
from gkp.grouped.forms import choose_forms
from gkp.models import arch_arg_names, build_model
from gkp.pruning.method import PruningContext
from gkp.pruning.plan import Plan
from gkp.pruning.registry import PRUNING_METHODS
from gkp.pruning.surgery import apply as apply_plan
from gkp.rundir import RunDir, StageStore, fingerprint, write_json_atomic
from gkp.schema import to_plain
from gkp.seeding import derive_seed, seed_everything

log = logging.getLogger(__name__)

# Which stage writes each model the eval stage can name.
PRODUCED_BY = {"dense": "train", "pruned": "prune", "final": "finetune"}


@dataclass
class Context:
    exp: Experiment
    run: RunDir
    device: torch.device
    data: DataBundle

    def fingerprint(self, stage: str) -> str:
        return fingerprint(self.exp.to_dict(), stage)


# ------------------------------------------------------------------ models and their files


def new_model(ctx: Context) -> nn.Module:
    """A freshly initialised model for the configured arch, sized and normalised for the data."""
    exp, data = ctx.exp, ctx.data
    args: dict[str, Any] = {
        "num_classes": exp.model.num_classes or data.num_classes,
        "mean": list(data.mean),
        "std": list(data.std),
        **exp.model.args,
    }
    if "stem" in arch_arg_names(exp.model.arch) and "stem" not in args:
        args["stem"] = "small" if data.image_size <= 64 else "imagenet"
    return build_model(exp.model.arch, **args)


def model_path(ctx: Context, name: str) -> Path | None:
    """The checkpoint behind an eval model name (dense, pruned, final, best_<metric>), if it exists."""
    run = ctx.run.path
    if name == "dense":
        candidates = [run / "dense.ckpt", Path(ctx.exp.model.checkpoint) if ctx.exp.model.checkpoint else None]
    elif name == "pruned":
        candidates = [run / "pruned.ckpt"]
    elif name == "final":
        candidates = [run / "finetuned.ckpt", run / "pruned.ckpt", model_path(ctx, "dense")]
    else:
        candidates = [run / f"{name}.ckpt"]
    return next((p for p in candidates if p is not None and p.is_file()), None)


def _require_model(ctx: Context, name: str) -> Path:
    path = model_path(ctx, name)
    if path is None:
        stage = PRODUCED_BY.get(name, "finetune")
        raise RunFolderError(
            f"no '{name}' model in {ctx.run.path}: run the {stage} stage first "
            f"(gkp {stage} CONFIG){' or set model.checkpoint' if name == 'dense' else ''}"
        )
    return path


# ------------------------------------------------------------------ checks before any compute


def _check_model_fits_data(ctx: Context) -> None:
    classes = ctx.exp.model.num_classes
    if classes is not None and classes < ctx.data.num_classes:
        raise ConfigError(
            f"model.num_classes: {classes} classes, but data '{ctx.exp.data.name}' has labels up to "
            f"{ctx.data.num_classes - 1}; leave model.num_classes unset to use the data's class count"
        )
    if not ctx.exp.model.checkpoint:
        return
    payload = read_checkpoint(ctx.exp.model.checkpoint)
    if ctx.exp.model.arch is not None and ctx.exp.model.arch != payload["arch"]:
        raise ConfigError(
            f"model.arch: the config says {ctx.exp.model.arch} but model.checkpoint holds "
            f"{payload['arch']}; drop model.arch (the checkpoint names its own) or fix it"
        )
    classes = payload["arch_args"].get("num_classes")
    if classes is not None and classes < ctx.data.num_classes:
        raise ConfigError(
            f"model.checkpoint: {ctx.exp.model.checkpoint} predicts {classes} classes but "
            f"data '{ctx.exp.data.name}' has labels up to {ctx.data.num_classes - 1}"
        )


def _method_snapshots(exp: Experiment) -> tuple[int, ...]:
    """Training snapshots the configured pruning method reads (TMI-GKP's epochs 35..70, say)."""
    if exp.prune is None:
        return ()
    return PRUNING_METHODS.get(exp.prune.method).snapshot_epochs(exp.prune.params)


def _check_snapshots(ctx: Context, stages: tuple[str, ...]) -> None:
    needed = _method_snapshots(ctx.exp)
    trained_here = "train" in stages and ctx.exp.train.epochs >= max(needed, default=0)
    missing = [e for e in needed if not ctx.run.snapshot_path(e).is_file()]
    if missing and not trained_here:
        raise ConfigError(
            f"prune.method: {ctx.exp.prune.method} reads training snapshots of epochs {needed[0]}..{needed[-1]}, "
            f"and {ctx.run.path / 'snapshots'} lacks {len(missing)} of them. The train stage saves them "
            f"(with train.epochs >= {needed[-1]}); a model loaded from model.checkpoint has none"
        )


def preflight(ctx: Context, stages: tuple[str, ...]) -> None:
    """Fail before any compute when a stage would lack its input or the settings cannot work."""
    exp = ctx.exp
    if any(s in stages for s in ("train", "finetune")) and ctx.data.train is None:
        raise ConfigError("data: the train/finetune stages need a training split")
    _check_model_fits_data(ctx)
    will_make = {name for name, stage in PRODUCED_BY.items() if stage in stages}
    if "finetune" in stages:
        will_make |= {f"best_{m}" for m in ("benign", *exp.finetune.eval_attacks)}
    if "prune" in stages:
        dense = None if "dense" in will_make else _require_model(ctx, "dense")
        model = new_model(ctx) if dense is None else load_model(dense)[0]
        method = PRUNING_METHODS.get(exp.prune.method, "prune.method")
        method.check(model, exp.prune.rate, exp.prune.params, _pruning_context(ctx))
        if method.calibrated and ctx.data.train is None:
            raise ConfigError(
                f"prune.method: {method.name} reads calibration images from the training split, and "
                f"data '{exp.data.name}' has none here (npz: set data.train_path)"
            )
        _check_snapshots(ctx, stages)
    if "finetune" in stages and "pruned" not in will_make:
        _require_model(ctx, "pruned")
    if "eval" in stages:
        for name in exp.eval.models:
            if name not in will_make and not (name == "final" and will_make):
                _require_model(ctx, name)


# ------------------------------------------------------------------ stages


def _summary(outcome: FitOutcome, cfg, best_prefix: str) -> dict[str, Any]:
    best = {m: {**r, "checkpoint": f"{best_prefix}best_{m}.ckpt"} for m, r in outcome.best.items()}
    return {"select_on": cfg.select_on, "epochs": cfg.epochs, "best": best, "final": outcome.final}


def _train_and_save(
    ctx: Context,
    stage: str,
    model: nn.Module,
    output: str,
    best_prefix: str,
    snapshot_epochs: frozenset[int] = frozenset(),
) -> None:
    """Run ``fit`` for a training stage, then save its final model and its best-epoch summary."""
    cfg = getattr(ctx.exp, stage)
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
    save_checkpoint(ctx.run.path / output, model, metadata)
    write_json_atomic(ctx.run.path / f"{stage}.json", _summary(outcome, cfg, best_prefix))


def stage_train(ctx: Context) -> None:
    seed_everything(ctx.exp.seed)
    snapshots = frozenset(ctx.exp.train.snapshot_epochs) | frozenset(_method_snapshots(ctx.exp))
    _train_and_save(ctx, "train", new_model(ctx).to(ctx.device), "dense.ckpt", "dense_", snapshots)


def _pruning_context(ctx: Context) -> PruningContext:
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


def stage_prune(ctx: Context) -> None:
    exp = ctx.exp
    dense, _ = load_model(_require_model(ctx, "dense"), ctx.device)
    method = PRUNING_METHODS.get(exp.prune.method)
    start = time.perf_counter()
    context = _pruning_context(ctx)
    layers = method.select(dense, exp.prune.rate, exp.prune.params, context)
    seconds = time.perf_counter() - start
    rate = None if exp.prune.target_macs is not None else exp.prune.rate  # a MACs target replaces the rate
    plan = Plan(method.name, rate, layers, to_plain(exp.prune.params))
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
        method.name,
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
        **({"selection": context.notes} if context.notes else {}),
    }
    write_json_atomic(ctx.run.path / "plan.json", {**plan.to_dict(), "metadata": metadata})
    save_checkpoint(ctx.run.path / "pruned.ckpt", pruned, {"stage": "prune", "input_size": ctx.data.image_size})


def _fastest_forms(ctx: Context, model: nn.Module, batch_size: int, train: bool, channels_last: bool) -> None:
    """Run each grouped-kernel conv in its fastest equivalent form on this device and batch, timed in the
    memory format it will run in. The forms sum in different orders, and timings vary, so deterministic
    runs keep the default form."""
    if ctx.exp.deterministic or not any(isinstance(m, GroupedKernelConv2d) for m in model.modules()):
        return
    choose_forms(model, ctx.data.image_size, batch_size, train=train, channels_last=channels_last)


def stage_finetune(ctx: Context) -> None:
    seed_everything(ctx.exp.seed)
    model, _ = load_model(_require_model(ctx, "pruned"), ctx.device)
    channels_last = use_channels_last(ctx.exp.finetune.channels_last, ctx.device)
    _fastest_forms(ctx, model, ctx.exp.data.batch_size, train=True, channels_last=channels_last)
    _train_and_save(ctx, "finetune", model, "finetuned.ckpt", "")


def _evaluate_model(ctx: Context, name: str) -> dict[str, Any]:
    path = _require_model(ctx, name)
    model, _ = load_model(path, ctx.device)
    batch_size, train = ctx.exp.data.eval_batch_size, bool(ctx.exp.attacks)
    _fastest_forms(ctx, model, batch_size, train=train, channels_last=ctx.exp.eval.channels_last)
    report = evaluate(
        model,
        ctx.data.test,
        ctx.exp.attacks,
        batch_size=ctx.exp.data.eval_batch_size,
        seed=ctx.exp.seed,
        description=f"eval {name}",
        options=ctx.exp.eval,
    )
    cost = measure(model, ctx.data.image_size)
    ctx.run.write_per_sample(name, report.per_sample)
    return {"model": name, "checkpoint": str(path), "params": cost.params, "macs": cost.macs, **report.to_dict()}


def stage_eval(ctx: Context) -> None:
    entries = [_evaluate_model(ctx, name) for name in ctx.exp.eval.models]
    training = {
        stage: json.loads((ctx.run.path / f"{stage}.json").read_text())
        for stage in ("train", "finetune")
        if (ctx.run.path / f"{stage}.json").is_file()
    }
    results = {
        "name": ctx.exp.name,
        "device": str(ctx.device),
        **entries[0],
        "other_models": entries[1:],
        "training": training,
    }
    write_json_atomic(ctx.run.path / "results.json", results)


STAGE_FUNCTIONS = {"train": stage_train, "prune": stage_prune, "finetune": stage_finetune, "eval": stage_eval}


def run_experiment(
    exp: Experiment, out: str | Path | None = None, stages: tuple[str, ...] | None = None, restart: bool = False
) -> dict[str, Any] | None:
    """Run ``stages`` (default: the config's) of ``exp`` in ``out`` (default runs/<name>); returns
    the results of the eval stage when it ran or had run."""
    stages = tuple(stages or exp.stages)
    device = resolve_device(exp.device)
    set_determinism(exp.deterministic)
    run = RunDir(out or Path("runs") / exp.name)
    if restart:
        run.move_aside()
    ctx = Context(exp, run, device, load_data(exp.data, device, exp.model.num_classes))
    preflight(ctx, stages)
    run.prepare(exp, device)
    log.info("run folder %s on %s", ctx.run.path, device)
    for stage in stages:
        if ctx.run.is_done(stage):
            log.info("%s: already done in %s, skipped", stage, ctx.run.path)
            continue
        start = time.perf_counter()
        log.info("%s: starting", stage)
        ctx.run.mark_started(stage, ctx.fingerprint(stage))
        STAGE_FUNCTIONS[stage](ctx)
        ctx.run.mark_done(stage, ctx.fingerprint(stage))
        log.info("%s: done in %.1fs", stage, time.perf_counter() - start)
    results_file = ctx.run.path / "results.json"
    return json.loads(results_file.read_text()) if "eval" in stages and results_file.is_file() else None
