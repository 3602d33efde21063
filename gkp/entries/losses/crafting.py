"""What the adversarial trainings share: crafting a batch's training examples with a registered attack, in
pixel units (the models normalise inside, so ``eps: 8/255`` is the usual CIFAR-10 threat model), and the
cross-entropy of those examples.

``bn_mode`` is the BatchNorm mode while the examples are crafted: ``train`` (batch statistics, and the
running statistics updated by the attack's passes, as Madry's and RAP-ADMM's code run it) or ``eval``
(running statistics, as TRADES's code does).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from gkp.foundation.contracts import Attack, Objective, StepContext
from gkp.foundation.threat import PIXELS

BatchNormMode = Literal["train", "eval"]
BN_MODE_DOC = "BatchNorm mode while crafting examples"


def craft(step: StepContext, attack: Attack, params, bn_mode: BatchNormMode) -> torch.Tensor:
    """The attack's examples of the step's batch, crafted with BatchNorm in ``bn_mode``; the model is
    left in the mode it was in (train mode, or eval mode in a phase that freezes it)."""
    training = step.model.training
    if bn_mode == "eval":
        step.model.eval()
    try:
        return attack.run(step.model, step.x, step.y, params, step.generator, PIXELS)
    finally:
        step.model.train(training)


def adversarial_cross_entropy(
    attack: Attack, attack_params, bn_mode: BatchNormMode, label_smoothing: float
) -> Objective:
    """The cross-entropy of the attack's examples; the training accuracy is counted on them."""

    def objective(step: StepContext):
        logits = step.model(craft(step, attack, attack_params, bn_mode))
        return F.cross_entropy(logits, step.y, label_smoothing=label_smoothing), logits

    return objective
