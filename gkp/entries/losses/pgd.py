"""PGD adversarial training (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
ICLR 2018): minimise the cross-entropy of PGD examples (L-inf, uniform random start, ``steps`` sign
steps of ``step_size``). Madry's CIFAR-10 code: eps 8/255, step 2/255, 10 steps (the paper: 7)."""

from __future__ import annotations

from dataclasses import dataclass

from gkp.entries.losses.crafting import BN_MODE_DOC, BatchNormMode, adversarial_cross_entropy
from gkp.foundation.contracts import Attack, Loss, Objective
from gkp.foundation.schema import at_least, option, positive


@dataclass(frozen=True)
class PGDTrainingParams:
    eps: float = option(8 / 255, check=at_least(0), doc="L-inf radius in pixel units")
    step_size: float = option(2 / 255, check=positive, doc="step per iteration")
    steps: int = option(10, check=at_least(1), doc="iterations (Madry's CIFAR-10 code: 10; the paper: 7)")
    random_start: bool = option(True, doc="start from a uniform random point of the ball")
    bn_mode: BatchNormMode = option("train", doc=BN_MODE_DOC)


def pgd_objective(params: PGDTrainingParams, label_smoothing: float, attack: Attack) -> Objective:
    attack_params = attack.params(
        eps=params.eps, norm="linf", step_size=params.step_size, steps=params.steps, random_start=params.random_start
    )
    return adversarial_cross_entropy(attack, attack_params, params.bn_mode, label_smoothing)


ENTRY = Loss(
    "pgd",
    PGDTrainingParams,
    pgd_objective,
    "PGD adversarial training (Madry et al., ICLR 2018)",
    key="adversarial",
    attack="pgd",
)
