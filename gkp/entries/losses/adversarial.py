"""Adversarial training objectives, registered as ``gkp.application.catalog.ADVERSARIAL_TRAINING`` and chosen by
``train.adversarial`` / ``finetune.adversarial``: ``{method: pgd | trades | fgsm_rs, eps: ..., ...}``.

Each crafts its training examples with a registered attack (``attack``), in pixel units: the models
normalise inside, so ``eps: 8/255`` is the usual CIFAR-10 threat model.

- ``pgd``: PGD adversarial training (Madry et al., ICLR 2018): minimise the cross-entropy of PGD
  examples (L-inf, uniform random start, ``steps`` sign steps of ``step_size``). Madry's CIFAR-10 code:
  eps 8/255, step 2/255, 10 steps (the paper: 7).
- ``fgsm_rs``: "fast is better than free" (Wong, Rice & Kolter, ICLR 2020): one step of 1.25 eps from a
  uniform random start, projected back to the ball; the cost of about two plain steps.
- ``trades``: TRADES (Zhang et al., ICML 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x'))``, batch-mean
  KL, ``x'`` from the ``pgd_kl`` attack (eps 0.031, 10 steps of 0.007); beta 6 as in the paper.

``bn_mode`` is the BatchNorm mode while the examples are crafted: ``train`` (batch statistics, and the
running statistics updated by the attack's passes, as Madry's and RAP-ADMM's code run it) or ``eval``
(running statistics, as TRADES's code does). The training accuracy is counted on the adversarial
examples (TRADES: on the clean ones, which its loss reads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attacks.pgd_kl import kl_from
from gkp.foundation.contracts import AdversarialTraining, Attack, Objective
from gkp.foundation.schema import at_least, option, positive
from gkp.foundation.threat import PIXELS

BatchNormMode = Literal["train", "eval"]


def craft(model: nn.Module, attack: Attack, params, x, y, generator, bn_mode: BatchNormMode) -> torch.Tensor:
    """The attack's examples of a batch, crafted with BatchNorm in ``bn_mode``; the model is left in train
    mode."""
    if bn_mode == "eval":
        model.eval()
    try:
        return attack.run(model, x, y, params, generator, PIXELS)
    finally:
        model.train()


# ------------------------------------------------------------------------------------------- PGD


@dataclass(frozen=True)
class PGDTrainingParams:
    eps: float = option(8 / 255, check=at_least(0), doc="L-inf radius in pixel units")
    step_size: float = option(2 / 255, check=positive, doc="step per iteration")
    steps: int = option(10, check=at_least(1), doc="iterations (Madry's CIFAR-10 code: 10; the paper: 7)")
    random_start: bool = option(True, doc="start from a uniform random point of the ball")
    bn_mode: BatchNormMode = option("train", doc="BatchNorm mode while crafting examples")


def adversarial_cross_entropy(
    attack: Attack, attack_params, bn_mode: BatchNormMode, label_smoothing: float
) -> Objective:
    def objective(model, x, y, generator):
        x_adv = craft(model, attack, attack_params, x, y, generator, bn_mode)
        logits = model(x_adv)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    return objective


def pgd_objective(attack: Attack, params: PGDTrainingParams, label_smoothing: float) -> Objective:
    attack_params = attack.params(
        eps=params.eps, norm="linf", step_size=params.step_size, steps=params.steps, random_start=params.random_start
    )
    return adversarial_cross_entropy(attack, attack_params, params.bn_mode, label_smoothing)


PGD = AdversarialTraining(
    "pgd", PGDTrainingParams, "pgd", pgd_objective, "PGD adversarial training (Madry et al., ICLR 2018)"
)


# ------------------------------------------------------------------------------------------- FGSM-RS


@dataclass(frozen=True)
class FGSMRSParams:
    eps: float = option(8 / 255, check=at_least(0), doc="L-inf radius in pixel units")
    step_size: float | None = option(None, check=positive, doc="the step; default 1.25 eps (Wong et al.)")
    bn_mode: BatchNormMode = option("train", doc="BatchNorm mode while crafting examples")


def fgsm_rs_objective(attack: Attack, params: FGSMRSParams, label_smoothing: float) -> Objective:
    step = params.step_size if params.step_size is not None else 1.25 * params.eps
    attack_params = attack.params(eps=params.eps, norm="linf", step_size=step, steps=1, random_start=True)
    return adversarial_cross_entropy(attack, attack_params, params.bn_mode, label_smoothing)


FGSM_RS = AdversarialTraining(
    "fgsm_rs",
    FGSMRSParams,
    "pgd",
    fgsm_rs_objective,
    "FGSM with a random start, 'fast is better than free' (Wong et al., ICLR 2020)",
)


# ------------------------------------------------------------------------------------------- TRADES


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


def trades_objective(attack: Attack, params: TRADESParams, label_smoothing: float) -> Objective:
    attack_params = attack.params(eps=params.eps, step_size=params.step_size, steps=params.steps)

    def objective(model, x, y, generator):
        x_adv = craft(model, attack, attack_params, x, y, generator, params.bn_mode)
        clean_logits = model(x)
        return trades_loss(clean_logits, model(x_adv), y, params.beta, label_smoothing), clean_logits

    return objective


TRADES = AdversarialTraining("trades", TRADESParams, "pgd_kl", trades_objective, "TRADES (Zhang et al., ICML 2019)")
