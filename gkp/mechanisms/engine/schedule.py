"""Learning-rate schedules, stepped once per epoch: constant, step, multistep and cosine."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LRScheduler, MultiStepLR, StepLR


def build_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """The schedule of a ``TrainConfig``: ``step`` decays by ``gamma`` every ``step_size`` epochs (the
    paper's StepLR), ``multistep`` at each of ``milestones``, ``cosine`` anneals to 0 over ``epochs``."""
    if cfg.schedule == "step":
        return StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.schedule == "multistep":
        return MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return ConstantLR(optimizer, factor=1.0, total_iters=0)
