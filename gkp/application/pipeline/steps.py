"""What each stage of the pipeline does (the table of stages is ``gkp.application.pipeline.stages.STAGES``): train, prune,
finetune and evaluate, each a function of the run ``Context``. A stage reads its inputs from the run
folder and writes its outputs atomically, so a stage run alone (``gkp prune CONFIG``) gives what it gives
inside ``gkp run``; the ``check_*`` functions run before any compute.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gkp.application.catalog import ATTACKS, PRUNING_METHODS, BatchNormSparsity, model_for_data
from gkp.application.checkpoints.io import load_model, read_checkpoint, save_checkpoint
from gkp.application.checkpoints.zoo import local_checkpoint, user_cache
from gkp.application.pipeline.rundir import RunDir, StageStore
from gkp.application.pipeline.stages import SAVED_MODELS, STAGE_NAMES, model_file, produced_by, stage_named
from gkp.application.reports.curves import write_training_curves
from gkp.foundation.contracts import (
    Objective,
    Phase,
    PruningContext,
    PruningMethod,
    Recipe,
    Selection,
    TrainingHooks,
    model_spec,
)
from gkp.foundation.errors import ConfigError, RunFolderError
from gkp.foundation.files import write_json_atomic
from gkp.foundation.schema import to_plain
from gkp.foundation.seeding import derive_seed, seed_everything
from gkp.mechanisms.counting import count_nonzero_params, measure
from gkp.mechanisms.data.bundle import DataBundle
from gkp.mechanisms.data.splits import calibration_batches
from gkp.mechanisms.engine.evaluate import evaluate
from gkp.mechanisms.engine.hooks import HookChain
from gkp.mechanisms.engine.train import FitOutcome, LoopSettings, cross_entropy, fit
from gkp.mechanisms.layers.forms import choose_forms, use_form
from gkp.mechanisms.pruning.plan import Plan
from gkp.mechanisms.pruning.surgery import apply as apply_plan

if TYPE_CHECKING:
    from gkp.application.config import Experiment

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
        candidates.append(local_checkpoint(ctx.exp.model.checkpoint))
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
        stage = produced_by(name, ctx.exp)
        raise RunFolderError(
            f"no '{name}' model in {ctx.run.path}: run the {stage} stage first "
            f"(gkp {stage} CONFIG){' or set model.checkpoint' if name == 'dense' else ''}"
        )
    return path


def new_model(ctx: Context) -> nn.Module:
    """A freshly initialised model for the configured arch, sized and normalised for the data."""
    return model_for_data(ctx.exp.model.arch, ctx.data, ctx.exp.model.num_classes, ctx.exp.model.args)


def forms_cache() -> Path:
    """The file of grouped-conv form timings kept across stages and runs on this machine."""
    return user_cache("forms.json", "GKP_FORMS_CACHE")


def fastest_forms(ctx: Context, model: nn.Module, batch_size: int, train: bool, channels_last: bool) -> dict[str, int]:
    """Run each layer that has several equivalent forms in its fastest one on this device and batch,
    timed in the memory format it will run in, once per machine (``forms_cache``), so that the same
    command gives the same numbers; deterministic runs keep the default forms. Returns how many layers
    run in each form."""
    if ctx.exp.deterministic:
        return {}
    path = forms_cache()
    timings = _read_timings(path)
    known = dict(timings)
    chosen = choose_forms(
        model, ctx.data.image_size, batch_size, train=train, channels_last=channels_last, timings=timings
    )
    if timings != known:
        _record_timings(path, {k: v for k, v in timings.items() if k not in known})
    return dict(Counter(chosen.values()))


def _read_timings(path: Path) -> dict[str, str]:
    try:
        timings = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return timings if isinstance(timings, dict) else {}


def _record_timings(path: Path, new: dict[str, str]) -> None:
    """Add timings to the file; a choice another run recorded meanwhile wins, so that all keep one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {**new, **_read_timings(path)})
    except OSError as error:
        log.warning("could not record grouped-conv form timings in %s (%s): they will be timed again", path, error)


def training_forms(model: nn.Module) -> None:
    """Grouped-kernel layers train in the dense form: the same arithmetic as the masked dense model, at
    the dense model's step time (the grouped forms' backward passes cost several times more on CPU)."""
    use_form(model, "dense")


# ------------------------------------------------------------------ train and finetune


def _summary(outcome: FitOutcome, cfg, best_prefix: str) -> dict[str, Any]:
    best = {m: {**r, "checkpoint": f"{best_prefix}best_{m}.ckpt"} for m, r in outcome.best.items()}
    return {"select_on": cfg.select_on, "epochs": len(outcome.history), "best": best, "final": outcome.final}


def objective_of(cfg) -> Objective:
    """The loss a training section minimises: its adversarial training's, else cross-entropy."""
    if cfg.adversarial is None:
        return cross_entropy(cfg.label_smoothing)
    method = cfg.adversarial.method
    return method.objective(ATTACKS.get(method.attack), cfg.adversarial.params, cfg.label_smoothing)


def _hooks(cfg, method_hooks: TrainingHooks | None) -> TrainingHooks:
    """A training-time method's hooks and the section's options' (network slimming's sparsity term)."""
    hooks = [method_hooks] if method_hooks is not None else []
    if cfg.bn_sparsity:
        hooks.append(BatchNormSparsity(cfg.bn_sparsity))
    return HookChain(hooks)


def _epoch_evaluation(ctx: Context, cfg):
    split = ctx.data.val if cfg.select_on == "val" else ctx.data.test
    specs = [ctx.exp.attack(label) for label in cfg.eval_attacks]

    def evaluate_epoch(model: nn.Module, description: str) -> dict[str, float]:
        report = evaluate(
            model,
            split,
            specs,
            batch_size=ctx.exp.data.eval_batch_size,
            seed=ctx.exp.seed,
            description=description,
            options=ctx.exp.eval,
        )
        return report.accuracies()

    return evaluate_epoch


def train_stage(
    ctx: Context,
    stage: str,
    section: str,
    model: nn.Module,
    phases: list[Phase] | None = None,
    method_hooks: TrainingHooks | None = None,
    snapshot_epochs: frozenset[int] = frozenset(),
) -> FitOutcome:
    """Run the training loop for ``stage`` with the recipe of config section ``section`` (one phase
    unless a training-time method gives its own), and write the stage's best-epoch summary."""
    cfg = getattr(ctx.exp, section)
    best_prefix = stage_named(stage).best_prefix
    store = StageStore(ctx.run, stage, ctx.fingerprint(stage), best_prefix)
    settings = LoopSettings(
        stage=stage,
        seed=ctx.exp.seed,
        batch_size=ctx.exp.data.batch_size,
        amp=cfg.amp,
        channels_last=cfg.channels_last,
        sync_batchnorm=cfg.sync_batchnorm,
        eval_every=cfg.eval_every,
        metric_prefix=cfg.select_on,
        snapshot_epochs=snapshot_epochs,
    )
    try:
        outcome = fit(
            model,
            phases or [Phase("", Recipe.of(cfg))],
            train_split=ctx.data.train,
            settings=settings,
            store=store,
            objective=objective_of(cfg),
            hooks=_hooks(cfg, method_hooks),
            evaluate_epoch=_epoch_evaluation(ctx, cfg),
        )
    finally:
        store.close()
    write_json_atomic(ctx.run.path / f"{stage}.json", _summary(outcome, cfg, best_prefix))
    write_training_curves(ctx.run.path / "metrics.csv", ctx.run.path / "training_curves.png")
    return outcome


def _save_trained(ctx: Context, stage: str, model: nn.Module, outcome: FitOutcome) -> None:
    metadata = {"stage": stage, "input_size": ctx.data.image_size, "final": outcome.final}
    save_checkpoint(ctx.run.path / stage_named(stage).saves[1], model, metadata)


def method_snapshots(exp: Experiment) -> tuple[int, ...]:
    """Training snapshots the configured pruning method reads (TMI-GKP's epochs 35..70, say)."""
    if exp.prune is None:
        return ()
    return PRUNING_METHODS.get(exp.prune.method).snapshot_epochs(exp.prune.params)


def train(ctx: Context) -> None:
    seed_everything(ctx.exp.seed)
    snapshots = frozenset(ctx.exp.train.snapshot_epochs) | frozenset(method_snapshots(ctx.exp))
    model = new_model(ctx).to(ctx.device)
    _save_trained(ctx, "train", model, train_stage(ctx, "train", "train", model, snapshot_epochs=snapshots))


def finetune(ctx: Context) -> None:
    seed_everything(ctx.exp.seed)
    model, _ = load_model(require_model(ctx, "pruned"), ctx.device)
    training_forms(model)
    _save_trained(ctx, "finetune", model, train_stage(ctx, "finetune", "finetune", model))


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
    method = PRUNING_METHODS.get(ctx.exp.prune.method)
    if method.training is None:
        dense, _ = load_model(require_model(ctx, "dense"), ctx.device)
        selection, seconds = _select(ctx, dense)
        pruned = _cut(ctx, dense, selection)
        _save_pruned(ctx, dense, selection, pruned, {"select_seconds": round(seconds, 3)}, "dense")
    else:
        _prune_while_training(ctx, method)


def _cut(ctx: Context, source: nn.Module, selection: Selection) -> nn.Module:
    prune = ctx.exp.prune
    rate = None if prune.target_macs is not None else prune.rate  # a MACs target replaces the rate
    return apply_plan(source, Plan(prune.method, rate, selection.layers, to_plain(prune.params)))


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
        source_name: asdict(source_cost),
        "pruned": asdict(pruned_cost),
        "test_accuracy_before_finetune": accuracy,
        **({"selection": selection.notes} if selection.notes else {}),
    }
    write_json_atomic(ctx.run.path / "plan.json", {**model_spec(pruned).plan, "metadata": metadata})
    save_checkpoint(ctx.run.path / model_file("pruned"), pruned, {"stage": "prune", "input_size": ctx.data.image_size})


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


def _method_training(ctx: Context, method: PruningMethod, model: nn.Module) -> tuple[list[Phase], TrainingHooks]:
    prune = ctx.exp.prune
    recipe = Recipe.of(getattr(ctx.exp, prune.during))
    return method.training.build(model, prune.rate, prune.params, pruning_context(ctx), recipe)


def _prune_while_training(ctx: Context, method: PruningMethod) -> None:
    """Train with the method's hooks (from scratch or from the dense model, as ``prune.during`` says),
    keep the model as trained (``masked``), then cut out the zeroed filters that can be removed."""
    exp = ctx.exp
    seed_everything(exp.seed)
    if exp.prune.during == "train":
        model = new_model(ctx).to(ctx.device)
    else:
        model, _ = load_model(require_model(ctx, "dense"), ctx.device)
    phases, hooks = _method_training(ctx, method, model)
    outcome = train_stage(ctx, "prune", exp.prune.during, model, phases, hooks)
    metadata = {"stage": "prune", "input_size": ctx.data.image_size, "final": outcome.final}
    save_checkpoint(ctx.run.path / model_file("masked"), model, metadata)
    selection = method.select(model, exp.prune.rate, exp.prune.params, pruning_context(ctx))
    pruned = _cut(ctx, model, selection)
    notes = {"trained": exp.prune.during, **_masked_physical_gap(ctx, model, pruned)}
    _save_pruned(ctx, model, selection, pruned, notes, "masked")


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
    fresh = "dense" in will_make or exp.prune.during == "train"
    model = new_model(ctx) if fresh else load_model(require_model(ctx, "dense"))[0]
    method = PRUNING_METHODS.get(exp.prune.method, "prune.method")
    method.check(model, exp.prune.rate, exp.prune.params, pruning_context(ctx))
    if method.training is not None:
        _method_training(ctx, method, model)  # its phases must fit the section's epochs
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
    forms = fastest_forms(ctx, model, batch_size, train=bool(ctx.exp.attacks), channels_last=ctx.exp.eval.channels_last)
    evaluation = ctx.fingerprint("eval")
    status = path.stat()
    identity = f"{path.resolve()} {status.st_size} {status.st_mtime_ns}"
    report = evaluate(
        model,
        ctx.data.test,
        ctx.exp.attacks,
        batch_size=batch_size,
        seed=ctx.exp.seed,
        description=f"eval {name}",
        options=ctx.exp.eval,
        finished=ctx.run.finished_attacks(evaluation, name, identity),
        on_finished=lambda label, outcome: ctx.run.save_finished_attack(evaluation, name, identity, label, outcome),
    )
    cost, authors = measure(model, ctx.data.image_size), measure(model, ctx.data.image_size, "authors")
    ctx.run.write_per_sample(name, report.per_sample, evaluation)
    counts = {"params": cost.params, "nonzero_params": count_nonzero_params(model), "macs": cost.macs}
    counts["authors_macs"] = authors.macs
    return {"model": name, "checkpoint": str(path), **counts, **({"forms": forms} if forms else {}), **report.to_dict()}


def evaluate_models(ctx: Context) -> None:
    entries = [_evaluate_model(ctx, name) for name in ctx.exp.eval.models]
    training = {
        stage: json.loads((ctx.run.path / f"{stage}.json").read_text())
        for stage in STAGE_NAMES
        if (ctx.run.path / f"{stage}.json").is_file()
    }
    prune = ctx.exp.prune
    results = {
        "name": ctx.exp.name,
        "method": prune.method if prune else None,
        "rate": prune.rate if prune and prune.target_macs is None else None,
        "data": ctx.exp.data.name,
        "device": str(ctx.device),
        **entries[0],
        "other_models": entries[1:],
        "training": training,
    }
    ctx.run.write_results(ctx.fingerprint("eval"), {**results, "evaluation": ctx.fingerprint("eval")})
