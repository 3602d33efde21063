"""The one training loop: phases of SGD epochs with hooks, AMP on CUDA, channels_last, periodic
evaluation with best-epoch tracking, per-epoch resume checkpoints, and a stop on a non-finite loss.

Everything a method or option changes about training goes through ``gkp.foundation.contracts``: the ``Phase``s (each
with a fresh optimizer and schedule from its ``Recipe``), the ``Objective`` (the loss of a batch:
cross-entropy, or an adversarial-training one) and the ``TrainingHooks`` (regularizers, gradient masks,
re-applied masks, per-epoch re-selection, state that goes into resume checkpoints). The loop calls every
hook at its point, whoever implements it.

``fit`` talks to the run folder only through a ``store`` (see ``gkp.application.pipeline.rundir.StageStore``): it asks for a
resume state at the start, and after every epoch hands over the new state, the metrics row and any
improved best model. Each epoch's shuffling, augmentation and objective randomness (an attack's random
start) come from seeds derived from the experiment seed, the stage, the phase and the epoch, so a run
resumed after an interruption repeats exactly the epochs it lost (bit-identical on CPU with
``deterministic: true``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from gkp.foundation.contracts import Objective, Phase, TrainingHooks
from gkp.foundation.errors import NonFiniteLossError
from gkp.foundation.seeding import derive_seed
from gkp.mechanisms.engine import distributed
from gkp.mechanisms.engine.device import amp_dtype, use_channels_last
from gkp.mechanisms.engine.schedule import build_scheduler

log = logging.getLogger(__name__)

NAN_CHECK_EVERY = 20  # steps between finiteness checks (each one syncs a GPU)
NO_HOOKS = TrainingHooks()

EpochEvaluation = Callable[[nn.Module, str], dict[str, float]]
"""``evaluate(model, description) -> {metric: accuracy}`` on the selection split (benign and attacks)."""


def cross_entropy(label_smoothing: float = 0.0) -> Objective:
    """Plain training: the cross-entropy of the clean batch."""

    def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    return objective


@dataclass(frozen=True)
class LoopSettings:
    """What the loop needs besides its phases: the stage (names checkpoints and seeds), the seed, the
    batch size, precision and memory format ("auto" / "on" / "off" as in the config), how often it
    evaluates (every ``eval_every`` epochs, 0: the last epoch only), whether a run of several processes
    normalises with the global batch (``gkp.mechanisms.engine.distributed``), the prefix of its metric columns and
    the (1-based, counted across phases) epochs after which the weights are also kept as snapshots."""

    stage: str
    seed: int
    batch_size: int
    amp: str = "auto"
    channels_last: str = "auto"
    sync_batchnorm: bool = False
    eval_every: int = 1
    metric_prefix: str = "test"
    snapshot_epochs: frozenset[int] = field(default_factory=frozenset)


@dataclass
class FitOutcome:
    history: list[dict[str, Any]]
    best: dict[str, dict[str, Any]]  # metric -> {"epoch": e, "accuracy": a}

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


@dataclass
class TrainingState:
    """What a resume checkpoint holds besides the model weights: the position (``epoch`` epochs of phase
    ``phase`` completed), the optimizer, schedule and scaler of that phase, the hooks' state, and the
    history and best epochs so far."""

    epoch: int
    optimizer: dict
    scheduler: dict
    scaler: dict | None
    history: list[dict[str, Any]]
    best: dict[str, dict[str, Any]]
    phase: int = 0
    hooks: dict = field(default_factory=dict)


def gradient_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler | None:
    """float16 autocast needs its loss scaled against underflowing gradients; bfloat16 and float32 do not."""
    return torch.amp.GradScaler(device.type) if amp_dtype(amp, device) == torch.float16 else None


@dataclass
class Optimization:
    """One phase's optimizer, schedule and (float16 only) gradient scaler."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None

    @classmethod
    def start(cls, model: nn.Module, phase: Phase, settings: LoopSettings, device: torch.device) -> Optimization:
        recipe = phase.recipe
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=recipe.lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
            nesterov=recipe.nesterov,
        )
        return cls(optimizer, build_scheduler(recipe, optimizer), gradient_scaler(settings.amp, device))

    def restore(self, state: TrainingState) -> None:
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        if self.scaler is not None and state.scaler:
            self.scaler.load_state_dict(state.scaler)

    def state(self) -> tuple[dict, dict, dict | None]:
        return (
            self.optimizer.state_dict(),
            self.scheduler.state_dict(),
            self.scaler.state_dict() if self.scaler else None,
        )

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


# ------------------------------------------------------------------------------------ one epoch


def _step(
    model: nn.Module, loss: torch.Tensor, optimization: Optimization, hooks: TrainingHooks, part: int | None
) -> None:
    """One SGD step on ``loss``. In a run of several processes ``part`` is this process's number of images
    of the batch: its loss is weighted by it and the gradients averaged, so the step is the whole batch's."""
    optimizer, scaler = optimization.optimizer, optimization.scaler
    optimizer.zero_grad(set_to_none=True)
    if part is not None:
        loss = loss * part
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if part is not None:
        distributed.average_gradients(model, part)
    if scaler is not None:
        scaler.unscale_(optimizer)
        hooks.after_backward(model)
        scaler.step(optimizer)
        scaler.update()
    else:
        hooks.after_backward(model)
        optimizer.step()
    hooks.after_step(model)


def train_one_epoch(
    model: nn.Module,
    split,
    optimization: Optimization,
    *,
    objective: Objective,
    hooks: TrainingHooks,
    settings: LoopSettings,
    seed: int,
    device: torch.device,
    description: str,
) -> dict[str, float]:
    model.train()
    dtype = amp_dtype(settings.amp, device)
    channels_last = use_channels_last(settings.channels_last, device)
    shard = distributed.shard()
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, "objective"))
    # loss, penalty (both summed over images), correct, images
    sums = torch.zeros(4, device=device, dtype=torch.float64)
    start = time.perf_counter()
    batches = split.batches(settings.batch_size, train=True, seed=seed, shard=shard)
    total = split.num_batches(settings.batch_size, train=True, shard=shard)
    progress = tqdm(batches, total=total, desc=description, leave=False, disable=None if shard.rank == 0 else True)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for step, (x, y) in enumerate(progress):
        x = x.contiguous(memory_format=layout)  # whatever the split hands over (its crop: channels_last)
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            loss, logits = objective(model, x, y, generator)
            penalty = hooks.regularizer(model)
        total_loss = loss if penalty is None else loss + penalty
        _step(model, total_loss, optimization, hooks, len(y) if shard.size > 1 else None)
        sums[0] += loss.detach().double() * len(y)
        if penalty is not None:
            sums[1] += penalty.detach().double() * len(y)
        sums[2] += (logits.detach().argmax(1) == y).sum()
        sums[3] += len(y)
        if (step + 1) % NAN_CHECK_EVERY == 0 or step + 1 == total:
            _check_finite(distributed.sum_across(sums[:2]).sum(), step)
    loss_sum, penalty_sum, correct, seen = distributed.sum_across(sums).tolist()
    seconds = time.perf_counter() - start
    row = {
        "train_loss": loss_sum / max(seen, 1),
        "train_accuracy": correct / max(seen, 1),
        "seconds": round(seconds, 3),
        "images_per_second": round(seen / max(seconds, 1e-9), 1),
    }
    if penalty_sum:
        row["train_penalty"] = penalty_sum / max(seen, 1)
    return row


def _check_finite(loss_sum: torch.Tensor, step: int) -> None:
    value = loss_sum.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(f"the training loss became {value} by step {step + 1} of the epoch")


# ------------------------------------------------------------------------------------ the loop


def epoch_seed(settings: LoopSettings, phase: Phase, epoch: int) -> int:
    """The seed of one epoch's shuffling, augmentation and objective (single-phase runs keep the seeds
    of the stage alone, so their epochs do not depend on whether phases exist)."""
    names = (settings.stage, epoch) if not phase.name else (settings.stage, phase.name, epoch)
    return derive_seed(settings.seed, *names)


class _Run:
    """The state of one ``fit`` call: where it is, what it has recorded, and how it persists."""

    def __init__(self, model, phases, settings, store, hooks, evaluate_epoch):
        self.model, self.phases, self.settings, self.store = model, list(phases), settings, store
        self.hooks, self.evaluate_epoch = hooks, evaluate_epoch
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, dict[str, Any]] = {}
        self.total_epochs = sum(phase.recipe.epochs for phase in self.phases)

    def epochs_before(self, phase_index: int) -> int:
        return sum(phase.recipe.epochs for phase in self.phases[:phase_index])

    def resume(self) -> TrainingState | None:
        state = self.store.load_resume(self.model)
        if state is not None:
            self.history, self.best = state.history, state.best
            self.hooks.load_state_dict(state.hooks)
            done = self.epochs_before(state.phase) + state.epoch
            log.info("%s: resuming after epoch %d of %d", self.settings.stage, done, self.total_epochs)
        return state

    def record(self, row: dict[str, Any], phase: Phase) -> None:
        """Evaluate when due, track the best epochs (of final-structure phases only) and keep snapshots."""
        if row["epoch"] == self.total_epochs or (
            self.settings.eval_every > 0 and row["epoch"] % self.settings.eval_every == 0
        ):
            for metric, value in self.evaluate_epoch(self.model, f"{self.describe(row['epoch'])} eval").items():
                row[f"{self.settings.metric_prefix}_{metric}"] = value
                if phase.final and (metric not in self.best or value > self.best[metric]["accuracy"]):
                    self.best[metric] = {"epoch": row["epoch"], "accuracy": value}
                    self.store.save_best(metric, self.model, self.best[metric])
        if row["epoch"] in self.settings.snapshot_epochs:
            self.store.save_snapshot(row["epoch"], self.model)
        self.history.append(row)
        log.info(
            "%s: %s", self.describe(row["epoch"]), ", ".join(_formatted(k, v) for k, v in row.items() if k != "epoch")
        )

    def describe(self, epoch: int) -> str:
        return f"{self.settings.stage} {epoch}/{self.total_epochs}"


def _formatted(key: str, value: Any) -> str:
    return f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"


def fit(
    model: nn.Module,
    phases: Sequence[Phase],
    *,
    train_split,
    settings: LoopSettings,
    store,
    objective: Objective | None = None,
    hooks: TrainingHooks = NO_HOOKS,
    evaluate_epoch: EpochEvaluation | None = None,
) -> FitOutcome:
    """Train ``model`` in place through ``phases`` (each with a fresh SGD and schedule), resuming from
    ``store``. Each step minimises ``objective`` (default: cross-entropy) plus the hooks' regularizer;
    after each epoch the model is evaluated (``evaluate_epoch``, when due) and checkpointed."""
    device = next(model.parameters()).device
    if use_channels_last(settings.channels_last, device):
        model.to(memory_format=torch.channels_last)
    run = _Run(model, phases, settings, store, hooks, evaluate_epoch or (lambda m, d: {}))
    objective = objective or cross_entropy()
    state = run.resume()
    distributed.broadcast_model(model)
    start_phase, start_epoch = (state.phase, state.epoch) if state else (0, 0)
    with distributed.global_batchnorm(model, settings.sync_batchnorm):
        for index in range(start_phase, len(run.phases)):
            phase = run.phases[index]
            optimization = Optimization.start(model, phase, settings, device)
            resuming = state is not None and index == start_phase
            if resuming:
                optimization.restore(state)
            else:
                hooks.start_phase(model, index)
            for epoch in range(start_epoch if resuming else 0, phase.recipe.epochs):
                _one_epoch(run, index, epoch, optimization, objective, train_split, device)
    return FitOutcome(run.history, run.best)


def _one_epoch(run: _Run, index: int, epoch: int, optimization, objective, train_split, device) -> None:
    phase, model, hooks, settings = run.phases[index], run.model, run.hooks, run.settings
    overall = run.epochs_before(index) + epoch + 1
    lr = optimization.lr
    hooks.start_epoch(model, index, epoch)
    try:
        row = train_one_epoch(
            model,
            train_split,
            optimization,
            objective=objective,
            hooks=hooks,
            settings=settings,
            seed=epoch_seed(settings, phase, epoch),
            device=device,
            description=run.describe(overall),
        )
    except NonFiniteLossError as error:
        raise NonFiniteLossError(
            f"{settings.stage}, epoch {overall}: {error}. The last good checkpoint ({run.store.describe_last()}) "
            "is kept. Fix the cause (a lower learning rate, the data) and start a new run "
            "(--out) or --restart"
        ) from None
    optimization.scheduler.step()
    distributed.broadcast_model(model)  # rank 0's BatchNorm statistics where each process kept its own
    hooks.end_epoch(model, index, epoch)
    phase_column = {"phase": phase.name} if phase.name else {}
    run.record({"epoch": overall, **phase_column, "lr": lr, **row}, phase)
    optimizer, scheduler, scaler = optimization.state()
    state = TrainingState(epoch + 1, optimizer, scheduler, scaler, run.history, run.best, index, hooks.state_dict())
    run.store.save_epoch(model, state)
