"""TRADES (Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019):
``CE(f(x), y) + beta * KL(f(x) || f(x'))``, batch-mean KL, ``x'`` from the ``pgd_kl`` attack (eps 0.031,
10 steps of 0.007); beta 6 as in the paper. The training accuracy is counted on the clean batch, which
its loss reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attacks.pgd_kl import kl_from
from gkp.entries.losses.crafting import BatchNormMode, craft
from gkp.foundation.contracts import Attack, Loss, Objective, StepContext
from gkp.foundation.schema import at_least, option, positive


@dataclass(frozen=True)
class TRADESParams:
    eps: float = option(0.031, check=at_least(0), doc="L-inf radius in pixel units (TRADES: 0.031)")
    step_size: float = option(0.007, check=positive, doc="step per iteration (TRADES: 0.007)")
    steps: int = option(10, check=at_least(1), doc="iterations (TRADES: 10)")
    beta: float = option(6.0, check=at_least(0), doc="weight of the KL term (the paper's 1/lambda: 6)")
    bn_mode: BatchNormMode = option("eval", doc="BatchNorm mode while crafting examples (TRADES's code: eval)")


def trades_loss(
    clean_logits: torch.Tensor, adversarial_logits: torch.Tensor, y: torch.Tensor, beta: float, label_smoothing: float
) -> torch.Tensor:
    """CE(f(x), y) + beta * mean over the batch of KL(softmax f(x) || softmax f(x'))."""
    natural = F.cross_entropy(clean_logits, y, label_smoothing=label_smoothing)
    robust = kl_from(F.softmax(clean_logits.float(), dim=1), adversarial_logits.float()).mean()
    return natural + beta * robust


def trades_objective(params: TRADESParams, label_smoothing: float, attack: Attack) -> Objective:
    attack_params = attack.params(eps=params.eps, step_size=params.step_size, steps=params.steps)

    def objective(step: StepContext):
        x_adv = craft(step, attack, attack_params, params.bn_mode)
        clean_logits = step.model(step.x)
        return trades_loss(clean_logits, step.model(x_adv), step.y, params.beta, label_smoothing), clean_logits

    return objective


ENTRY = Loss(
    "trades", TRADESParams, trades_objective, "TRADES (Zhang et al., ICML 2019)", key="adversarial", attack="pgd_kl"
)
