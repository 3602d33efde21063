"""The one training loop: phases of epochs with hooks, AMP on CUDA, channels_last, periodic evaluation
with best-epoch tracking, per-epoch resume checkpoints, and a stop on a non-finite loss.

Everything a method or option changes about training goes through ``gkp.foundation.contracts``: the
``Phase``s (each with fresh optimizers and schedules from its ``Recipe``, or its own optimizers and step;
the split it trains on, a frozen backbone, a rule that ends it early), the ``Objective`` (the loss of a
step: a ``Loss`` entry's) and the ``TrainingHooks`` (regularizers, gradient masks, re-applied masks,
per-epoch re-selection, state that goes into resume checkpoints). The loop calls every hook at its point,
whoever implements it.

``fit`` talks to the run folder only through a ``store`` (see ``gkp.application.pipeline.rundir``): it
asks for a resume state at the start, and after every epoch hands over the new state, the metrics row and
any improved best model. Each epoch's shuffling, augmentation and objective randomness (an attack's random
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
from torch import nn
from tqdm import tqdm

from gkp.foundation.contracts import Objective, Phase, Recipe, StepContext, TrainingHooks
from gkp.foundation.errors import ConfigError, NonFiniteLossError
from gkp.foundation.seeding import derive_seed
from gkp.mechanisms.engine import distributed
from gkp.mechanisms.engine.device import amp_dtype, use_channels_last
from gkp.mechanisms.engine.optimize import Optimization

log = logging.getLogger(__name__)

NAN_CHECK_EVERY = 20  # steps between finiteness checks (each one syncs a GPU)
NO_HOOKS = TrainingHooks()

EpochEvaluation = Callable[[nn.Module, str], dict[str, float]]
"""``evaluate(model, description) -> {metric: accuracy}`` on the selection split (benign and attacks)."""


@dataclass(frozen=True)
class LoopSettings:
    """What the loop needs besides its phases: the stage (names checkpoints and seeds), the seed, the
    batch size, precision and memory format ("auto" / "on" / "off" as in the config), how often it
    evaluates (every ``eval_every`` epochs, 0: the last epoch only), whether a run of several processes
    normalises with the global batch (``gkp.mechanisms.engine.distributed``), the prefix of its metric
    columns and the (1-based, counted across phases) epochs after which the weights are also kept as
    snapshots."""

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
    ``phase`` completed; a phase its stop rule ended counts as complete), the optimizers, schedules and
    scaler of that phase, the optimizer steps taken, the hooks' state, and the history and best epochs."""

    epoch: int
    optimization: dict
    history: list[dict[str, Any]]
    best: dict[str, dict[str, Any]]
    phase: int = 0
    steps: int = 0
    hooks: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Data:
    """The splits a phase may train on: ``train``, and ``val`` (``data.val_fraction``), if any."""

    train: Any
    val: Any = None

    def of(self, phase: Phase) -> Any:
        split = self.train if phase.data == "train" else self.val
        if split is None:
            raise ConfigError(
                f"phase '{phase.name}' trains on the validation fraction of the training split, and there is "
                "none: set data.val_fraction, e.g. 0.1"
            )
        return split


# ------------------------------------------------------------------------------------ one step


ONE_PHASE = Phase("", Recipe(epochs=1, lr=0.0))  # the phase of an epoch run on its own (benchmarks, tests)


def objective_generator(device: torch.device, seed: int) -> torch.Generator:
    """The generator an epoch's objective draws from (an attack's random start), seeded from its seed."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, "objective"))
    return generator


@dataclass
class Epoch:
    """What the steps of one epoch share: the model, the phase's optimization, the objective, the hooks,
    the objective's generator, where it is (the phase, its index, the epoch in it), the teacher, the
    stage's step count, and the module the objective runs (``forward``: the model, or in a run of several
    processes its ``DistributedDataParallel`` wrapper)."""

    model: nn.Module
    optimization: Optimization
    objective: Objective
    hooks: TrainingHooks
    generator: torch.Generator
    phase: Phase = ONE_PHASE
    index: int = 0
    epoch: int = 0
    teacher: nn.Module | None = None
    steps: int = 0
    part: int | None = None  # in a run of several processes: this process's images of the batch
    forward: nn.Module | None = None

    def context(self, x: torch.Tensor, y: torch.Tensor) -> StepContext:
        model = self.model if self.forward is None else self.forward
        return StepContext(model, x, y, self.generator, self.teacher, self.index, self.epoch, self.steps)


def default_step(epoch: Epoch, x: torch.Tensor, y: torch.Tensor, dtype) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """The objective plus the hooks' regularizer, minimised by every optimizer of the phase. In a run of
    several processes the loss is weighted by this process's share of the batch, and DDP averages the
    gradients, so the step is the whole batch's. Returns (loss, penalty or None, logits)."""
    model, hooks, optimization = epoch.model, epoch.hooks, epoch.optimization
    with torch.autocast(x.device.type, dtype=dtype) if dtype else nullcontext():
        loss, logits = epoch.objective(epoch.context(x, y))
        penalty = hooks.regularizer(model)
    total = loss if penalty is None else loss + penalty
    optimization.zero_grad()
    if epoch.part is not None:
        total = total * distributed.batch_weight(epoch.part, total)
    (optimization.scaler.scale(total) if optimization.scaler is not None else total).backward()
    optimization.unscale()
    hooks.after_backward(model)
    optimization.clip()
    optimization.step()
    return loss, penalty, logits


def own_step(epoch: Epoch, x: torch.Tensor, y: torch.Tensor, dtype) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """The phase's own step, under the same autocast."""
    with torch.autocast(x.device.type, dtype=dtype) if dtype else nullcontext():
        loss, logits = epoch.phase.step(epoch.context(x, y), epoch.optimization.optimizers, epoch.objective)
    return loss, None, logits


def train_one_epoch(
    epoch: Epoch, split, settings: LoopSettings, seed: int, description: str
) -> tuple[dict[str, float], bool]:
    """One pass over ``split``: (the metrics row, whether the phase's stop rule ended it early)."""
    model, device = epoch.model, epoch.generator.device
    model.train(not epoch.phase.frozen_backbone)
    dtype = amp_dtype(settings.amp, device)
    layout = torch.channels_last if use_channels_last(settings.channels_last, device) else torch.contiguous_format
    shard = distributed.shard()
    step_of = own_step if epoch.phase.step is not None else default_step
    # loss, penalty (both summed over images), correct, images
    sums = torch.zeros(4, device=device, dtype=torch.float64)
    start = time.perf_counter()
    batches = split.batches(settings.batch_size, train=True, seed=seed, shard=shard)
    total = split.num_batches(settings.batch_size, train=True, shard=shard)
    progress = tqdm(batches, total=total, desc=description, leave=False, disable=None if shard.rank == 0 else True)
    stopping = False
    for index, (x, y) in enumerate(progress):
        x = x.contiguous(memory_format=layout)  # whatever the split hands over (its crop: channels_last)
        epoch.part = len(y) if shard.size > 1 else None
        loss, penalty, logits = step_of(epoch, x, y, dtype)
        epoch.steps += 1
        epoch.hooks.after_step(model, epoch.optimization.lr, epoch.steps)
        sums[0] += loss.detach().double() * len(y)
        if penalty is not None:
            sums[1] += penalty.detach().double() * len(y)
        sums[2] += (logits.detach().argmax(1) == y).sum()
        sums[3] += len(y)
        stopping = epoch.phase.stop is not None and epoch.phase.stop(model)
        if (index + 1) % NAN_CHECK_EVERY == 0 or index + 1 == total or stopping:
            _check_finite(distributed.sum_across(sums[:2]).sum(), index)
        if stopping:
            log.info("%s: the phase's stop rule ended it after step %d of the epoch", description, index + 1)
            break
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
    return row, stopping


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
        self.steps = 0
        self.planned_epochs = sum(phase.recipe.epochs for phase in self.phases)

    def resume(self) -> TrainingState | None:
        """The state of the last finished epoch, if any: the hooks' state and the structure it implies are
        restored first, then the weights (which need that structure)."""
        found = self.store.load_resume()
        if found is None:
            return None
        state, weights = found
        self.hooks.load_state_dict(state.hooks, self.model)
        self.model.load_state_dict(weights)
        self.history, self.best, self.steps = state.history, state.best, state.steps
        log.info("%s: resuming after epoch %d of %d", self.settings.stage, len(self.history), self.planned_epochs)
        return state

    def record(self, row: dict[str, Any], phase: Phase, last: bool) -> None:
        """Evaluate when due, track the best epochs (of final-structure phases only) and keep snapshots."""
        if last or (self.settings.eval_every > 0 and row["epoch"] % self.settings.eval_every == 0):
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
        return f"{self.settings.stage} {epoch}/{self.planned_epochs}"


def _formatted(key: str, value: Any) -> str:
    return f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"


def fit(
    model: nn.Module,
    phases: Sequence[Phase],
    *,
    data: Data,
    settings: LoopSettings,
    store,
    objective: Objective,
    hooks: TrainingHooks = NO_HOOKS,
    evaluate_epoch: EpochEvaluation | None = None,
    teacher: nn.Module | None = None,
) -> FitOutcome:
    """Train ``model`` in place through ``phases``, resuming from ``store``. Each step minimises
    ``objective`` (plus the hooks' regularizer) or runs the phase's own step; after each epoch the model is
    evaluated (``evaluate_epoch``, when due) and checkpointed. ``teacher`` is given to the objective."""
    device = next(model.parameters()).device
    if distributed.shard().size > 1 and any(phase.step is not None or phase.stop is not None for phase in phases):
        raise ConfigError(
            "a phase with a step or a stop rule of its own trains in one process; run it without torchrun"
        )
    if use_channels_last(settings.channels_last, device):
        model.to(memory_format=torch.channels_last)
    run = _Run(model, phases, settings, store, hooks, evaluate_epoch or (lambda m, d: {}))
    state = run.resume()
    distributed.broadcast_model(model)
    start_phase, start_epoch = (state.phase, state.epoch) if state else (0, 0)
    trainable = {p: p.requires_grad for p in model.parameters()}
    with distributed.global_batchnorm(model, settings.sync_batchnorm):
        for index in range(start_phase, len(run.phases)):
            phase = run.phases[index]
            resuming = state is not None and index == start_phase
            _unfreeze(trainable)
            if not resuming:
                hooks.start_phase(model, index)
            optimization = Optimization.start(model, phase, settings.amp, device)
            if resuming:
                optimization.restore(state.optimization)
            if phase.frozen_backbone:
                _freeze_all_but(model, optimization, trainable)
            forward = distributed.data_parallel(model)
            first = start_epoch if resuming else 0
            for epoch in range(first, phase.recipe.epochs):
                stopped = _one_epoch(run, index, epoch, optimization, objective, data, forward, teacher)
                if stopped:
                    break
    _unfreeze(trainable)
    return FitOutcome(run.history, run.best)


def _freeze_all_but(model: nn.Module, optimization: Optimization, trainable: dict) -> None:
    """A frozen backbone: only the parameters the phase's optimizers hold get gradients."""
    held = set(optimization.parameters())
    for parameter in model.parameters():
        parameter.requires_grad_(parameter in held and trainable.get(parameter, True))


def _unfreeze(trainable: dict) -> None:
    for parameter, requires_grad in trainable.items():
        parameter.requires_grad_(requires_grad)


def _one_epoch(run: _Run, index: int, epoch: int, optimization, objective, data: Data, forward, teacher) -> bool:
    """Train, step the schedules, evaluate and checkpoint one epoch (the objective running ``forward``);
    whether the phase's stop rule ended it."""
    phase, model, hooks, settings = run.phases[index], run.model, run.hooks, run.settings
    device = next(model.parameters()).device
    overall = len(run.history) + 1
    lr = optimization.lr
    hooks.start_epoch(model, index, epoch)
    seed = epoch_seed(settings, phase, epoch)
    generator = objective_generator(device, seed)
    state = Epoch(
        model, optimization, objective, hooks, generator, phase, index, epoch, teacher, run.steps, forward=forward
    )
    try:
        row, stopped = train_one_epoch(state, data.of(phase), settings, seed, run.describe(overall))
    except NonFiniteLossError as error:
        raise NonFiniteLossError(
            f"{settings.stage}, epoch {overall}: {error}. The last good checkpoint ({run.store.describe_last()}) "
            "is kept. Fix the cause (a lower learning rate, the data) and start a new run "
            "(--out) or --restart"
        ) from None
    run.steps = state.steps
    optimization.end_epoch()
    distributed.broadcast_model(model)  # rank 0's BatchNorm statistics where each process kept its own
    hooks.end_epoch(model, index, epoch)
    phase_column = {"phase": phase.name} if phase.name else {}
    last = index + 1 == len(run.phases) and (stopped or epoch + 1 == phase.recipe.epochs)
    run.record({"epoch": overall, **phase_column, "lr": lr, **row}, phase, last)
    done = phase.recipe.epochs if stopped else epoch + 1
    state = TrainingState(done, optimization.state(), run.history, run.best, index, run.steps, hooks.state_dict())
    run.store.save_epoch(model, state)
    return stopped
