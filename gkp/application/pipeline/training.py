"""The stages that train: ``train`` (the dense model, from scratch) and ``finetune`` (the pruned model), and
``train_stage``, the one way a stage runs the training loop (the prune stage's training-time methods use it
too): the section's loss as the objective, its teacher, the method's and the section's hooks, the
per-epoch evaluation and the run folder's store."""

from __future__ import annotations

from typing import Any

from torch import nn

from gkp.application.api import hooks_of, objective_of
from gkp.application.catalog import PRUNING_METHODS
from gkp.application.checkpoints.io import save_checkpoint
from gkp.application.pipeline.context import Context, load_run_model, new_model
from gkp.application.pipeline.rundir import StageStore
from gkp.application.pipeline.stages import model_file, stage_named, teacher_models
from gkp.application.reports.curves import write_training_curves
from gkp.foundation.contracts import Phase, Recipe, TrainingHooks
from gkp.foundation.files import write_json_atomic
from gkp.foundation.seeding import seed_everything
from gkp.mechanisms.engine.evaluate import evaluate
from gkp.mechanisms.engine.train import Data, FitOutcome, LoopSettings, fit
from gkp.mechanisms.layers.forms import use_form


def train(ctx: Context) -> None:
    """The train stage: a fresh model trained with the ``train`` recipe, saved as the dense model."""
    seed_everything(ctx.exp.seed)
    snapshots = frozenset(ctx.exp.train.snapshot_epochs) | frozenset(method_snapshots(ctx.exp))
    model = new_model(ctx).to(ctx.device)
    _save_trained(ctx, "train", model, train_stage(ctx, "train", "train", model, snapshot_epochs=snapshots))


def finetune(ctx: Context) -> None:
    """The finetune stage: the pruned model trained with the ``finetune`` recipe, saved as the final model.
    Grouped-kernel layers train in the dense form: the same arithmetic as the masked dense model, at the
    dense model's step time (the grouped forms' backward passes cost several times more on CPU)."""
    seed_everything(ctx.exp.seed)
    model = load_run_model(ctx, "pruned")
    use_form(model, "dense")
    _save_trained(ctx, "finetune", model, train_stage(ctx, "finetune", "finetune", model))


def method_snapshots(exp) -> tuple[int, ...]:
    """Training snapshots the configured pruning method reads (TMI-GKP's epochs 35..70, say)."""
    if exp.prune is None:
        return ()
    return PRUNING_METHODS.get(exp.prune.method).snapshot_epochs(exp.prune.params)


def _save_trained(ctx: Context, stage: str, model: nn.Module, outcome: FitOutcome) -> None:
    metadata = {"stage": stage, "input_size": ctx.data.image_size, "final": outcome.final}
    save_checkpoint(ctx.run.path / model_file(stage_named(stage).saves(ctx.exp)[0]), model, metadata)


# ------------------------------------------------------------------------------------------- the loop


def teacher_of(ctx: Context, section: str) -> nn.Module | None:
    """The dense model in eval mode, without gradients, where the section's loss reads a teacher."""
    if not teacher_models(ctx.exp, section):
        return None
    teacher = load_run_model(ctx, "dense").eval()
    return teacher.requires_grad_(False)


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


def _summary(outcome: FitOutcome, cfg, best_prefix: str | None) -> dict[str, Any]:
    kept = (lambda m: {"checkpoint": f"{best_prefix}best_{m}.ckpt"}) if best_prefix is not None else (lambda m: {})
    best = {m: {**r, **kept(m)} for m, r in outcome.best.items()}
    return {"select_on": cfg.select_on, "epochs": len(outcome.history), "best": best, "final": outcome.final}


def _padded(data: Data, crop_padding: int | None) -> Data:
    """The splits with the training section's crop padding, where it sets one."""
    if crop_padding is None:
        return data
    val = data.val.with_crop_padding(crop_padding) if data.val is not None else None
    return Data(data.train.with_crop_padding(crop_padding), val)


def train_stage(
    ctx: Context,
    stage: str,
    section: str,
    model: nn.Module,
    phases: list[Phase] | None = None,
    method_hooks: TrainingHooks | None = None,
    snapshot_epochs: frozenset[int] = frozenset(),
    keep_best: bool = True,
) -> FitOutcome:
    """Run the training loop for ``stage`` with the recipe of config section ``section`` (one phase
    unless a training-time method gives its own), and write the stage's best-epoch summary; the best
    epochs' models are kept as checkpoints unless ``keep_best`` is false (a model a checkpoint cannot
    rebuild, with a method's own modules in it)."""
    cfg = getattr(ctx.exp, section)
    best_prefix = stage_named(stage).best_prefix if keep_best else None
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
            data=_padded(Data(ctx.data.train, ctx.data.val), cfg.crop_padding),
            settings=settings,
            store=store,
            objective=objective_of(cfg),
            hooks=hooks_of(cfg, method_hooks),
            evaluate_epoch=_epoch_evaluation(ctx, cfg),
            teacher=teacher_of(ctx, section),
        )
    finally:
        store.close()
    write_json_atomic(ctx.run.path / f"{stage}.json", _summary(outcome, cfg, best_prefix))
    write_training_curves(ctx.run.path / "metrics.csv", ctx.run.path / "training_curves.png")
    return outcome
