"""FGSM with a random start, "fast is better than free" (Wong, Rice & Kolter, ICLR 2020): one step of
1.25 eps from a uniform random start, projected back to the ball; the cost of about two plain steps."""

from __future__ import annotations

from dataclasses import dataclass

from gkp.entries.losses.crafting import BN_MODE_DOC, BatchNormMode, adversarial_cross_entropy
from gkp.foundation.contracts import Attack, Loss, Objective
from gkp.foundation.schema import at_least, option, positive


@dataclass(frozen=True)
class FGSMRSParams:
    eps: float = option(8 / 255, check=at_least(0), doc="L-inf radius in pixel units")
    step_size: float | None = option(None, check=positive, doc="the step; default 1.25 eps (Wong et al.)")
    bn_mode: BatchNormMode = option("train", doc=BN_MODE_DOC)


def fgsm_rs_objective(params: FGSMRSParams, label_smoothing: float, attack: Attack) -> Objective:
    step = params.step_size if params.step_size is not None else 1.25 * params.eps
    attack_params = attack.params(eps=params.eps, norm="linf", step_size=step, steps=1, random_start=True)
    return adversarial_cross_entropy(attack, attack_params, params.bn_mode, label_smoothing)


ENTRY = Loss(
    "fgsm_rs",
    FGSMRSParams,
    fgsm_rs_objective,
    "FGSM with a random start, 'fast is better than free' (Wong et al., ICLR 2020)",
    key="adversarial",
    attack="pgd",
)
