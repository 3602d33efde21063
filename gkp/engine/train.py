"""The training / fine-tuning loop: SGD, per-epoch schedules, AMP and channels_last on CUDA, periodic
evaluation with best-epoch tracking, per-epoch resume checkpoints, and a stop on a non-finite loss.

``fit`` talks to the run folder only through a ``store`` (see ``gkp.rundir.StageStore``): it asks for a
resume state at the start, and after every epoch hands over the new state, the metrics row and any
improved best model. Each epoch's shuffling and augmentation come from a seed derived from the
experiment seed, the stage and the epoch, so a run resumed after an interruption repeats exactly the
epochs it lost (bit-identical on CPU with ``deterministic: true``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from gkp.engine.device import amp_dtype, use_channels_last
from gkp.engine.evaluate import evaluate
from gkp.engine.schedule import build_scheduler
from gkp.errors import NonFiniteLossError
from gkp.seeding import derive_seed
from gkp.settings import EvalConfig

log = logging.getLogger(__name__)

NAN_CHECK_EVERY = 20  # steps between finiteness checks (each one syncs a GPU)


@dataclass
class FitOutcome:
    history: list[dict[str, Any]]
    best: dict[str, dict[str, Any]]  # metric -> {"epoch": e, "accuracy": a}

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


@dataclass
class TrainingState:
    """What a resume checkpoint holds besides the model weights."""

    epoch: int  # epochs completed
    optimizer: dict
    scheduler: dict
    scaler: dict | None
    history: list[dict[str, Any]]
    best: dict[str, dict[str, Any]]


def _should_evaluate(cfg, epoch: int) -> bool:
    last = epoch + 1 == cfg.epochs
    return last or (cfg.eval_every > 0 and (epoch + 1) % cfg.eval_every == 0)


def add_bn_sparsity(model: nn.Module, strength: float) -> None:
    """Network slimming's sparsity training (Liu et al., ICCV 2017): add the subgradient of
    ``strength * |gamma|`` to the gradient of every BatchNorm scale."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and module.weight is not None and module.weight.grad is not None:
            module.weight.grad.add_(torch.sign(module.weight.detach()), alpha=strength)


def train_one_epoch(
    model: nn.Module,
    split,
    cfg,
    optimizer,
    scaler,
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
    description: str,
) -> dict[str, float]:
    model.train()
    dtype = amp_dtype(cfg.amp, device)
    channels_last = use_channels_last(cfg.channels_last, device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    start = time.perf_counter()
    batches = split.batches(batch_size, train=True, seed=seed)
    total = split.num_batches(batch_size, train=True)
    for step, (x, y) in enumerate(tqdm(batches, total=total, desc=description, leave=False, disable=None)):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if cfg.bn_sparsity:
                scaler.unscale_(optimizer)
                add_bn_sparsity(model, cfg.bn_sparsity)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if cfg.bn_sparsity:
                add_bn_sparsity(model, cfg.bn_sparsity)
            optimizer.step()
        loss_sum += loss.detach().double() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if (step + 1) % NAN_CHECK_EVERY == 0 or step + 1 == total:
            _check_finite(loss_sum, step)
    seconds = time.perf_counter() - start
    return {
        "train_loss": loss_sum.item() / max(seen, 1),
        "train_accuracy": correct.item() / max(seen, 1),
        "seconds": round(seconds, 3),
        "images_per_second": round(seen / max(seconds, 1e-9), 1),
    }


def _check_finite(loss_sum: torch.Tensor, step: int) -> None:
    value = loss_sum.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(f"the training loss became {value} by step {step + 1} of the epoch")


def fit(
    model: nn.Module,
    cfg,
    *,
    stage: str,
    train_split,
    select_split,
    attack_specs: Sequence,
    batch_size: int,
    eval_batch_size: int,
    eval_options: EvalConfig,
    seed: int,
    store,
    snapshot_epochs: frozenset[int] = frozenset(),
) -> FitOutcome:
    """Train ``model`` in place for ``cfg.epochs`` epochs (a ``TrainConfig``), resuming from ``store``;
    after each epoch (1-based) in ``snapshot_epochs`` the weights are also kept as a snapshot. The epoch
    evaluations follow ``eval_options`` (the config's ``eval:`` section)."""
    device = next(model.parameters()).device
    if use_channels_last(cfg.channels_last, device):
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
    )
    scheduler = build_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype(cfg.amp, device) == torch.float16 else None
    state = store.load_resume(model)
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        if scaler is not None and state.scaler:
            scaler.load_state_dict(state.scaler)
        log.info("%s: resuming after epoch %d of %d", stage, state.epoch, cfg.epochs)
    history, best = (state.history, state.best) if state else ([], {})
    for epoch in range(state.epoch if state else 0, cfg.epochs):
        lr = optimizer.param_groups[0]["lr"]
        description = f"{stage} {epoch + 1}/{cfg.epochs}"
        try:
            row = train_one_epoch(
                model,
                train_split,
                cfg,
                optimizer,
                scaler,
                batch_size=batch_size,
                seed=derive_seed(seed, stage, epoch),
                device=device,
                description=description,
            )
        except NonFiniteLossError as error:
            raise NonFiniteLossError(
                f"{stage}, epoch {epoch + 1}: {error}. The last good checkpoint ({store.describe_last()}) is kept. "
                f"Fix the cause (a lower {stage}.lr, the data) and start a new run (--out) or --restart"
            ) from None
        scheduler.step()
        row = {"epoch": epoch + 1, "lr": lr, **row}
        if _should_evaluate(cfg, epoch):
            report = evaluate(
                model,
                select_split,
                attack_specs,
                batch_size=eval_batch_size,
                seed=seed,
                description=f"{description} eval",
                options=eval_options,
            )
            for metric, value in report.accuracies().items():
                row[f"{cfg.select_on}_{metric}"] = value
                if metric not in best or value > best[metric]["accuracy"]:
                    best[metric] = {"epoch": epoch + 1, "accuracy": value}
                    store.save_best(metric, model, best[metric])
        if epoch + 1 in snapshot_epochs:
            store.save_snapshot(epoch + 1, model)
        history.append(row)
        log.info("%s: %s", description, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        store.save_epoch(
            model,
            TrainingState(
                epoch + 1,
                optimizer.state_dict(),
                scheduler.state_dict(),
                scaler.state_dict() if scaler else None,
                history,
                best,
            ),
        )
    return FitOutcome(history, best)
