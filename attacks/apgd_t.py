"""APGD-T: targeted Auto-PGD with the DLR loss, from "Reliable evaluation of adversarial robustness with
an ensemble of diverse parameter-free attacks" (Croce & Hein, ICML 2020), AutoAttack's second attack.

For each of the ``targets`` classes ranked highest by the model after the true one, APGD (see
``attacks.apgd_ce``) maximises the targeted difference-of-logits-ratio loss
-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), which is invariant to the logits' scale; each target is
tried on the samples the earlier ones did not fool. Needs at least 4 classes.
Norms L-inf and L2; x (N, C, H, W) inside the box, y (N,) labels; eps in the units of x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from attacks.apgd_ce import apgd, with_restarts
from attacks.common import dlr
from gkp.foundation.contracts import Attack
from gkp.foundation.schema import at_least, option
from gkp.foundation.threat import PIXELS, Box


@dataclass(frozen=True)
class APGDTargetedParams:
    eps: float = option(8 / 255, check=at_least(0), doc="radius of the ball")
    norm: Literal["linf", "l2"] = option("linf", doc="the threat model's norm")
    steps: int = option(100, check=at_least(1), doc="iterations per target and run")
    targets: int = option(9, check=at_least(1), doc="target classes tried, highest-ranked first")
    restarts: int = option(1, check=at_least(1), doc="runs per target")


def run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    params: APGDTargetedParams,
    generator: torch.Generator | None = None,
    box: Box = PIXELS,
) -> torch.Tensor:
    with torch.no_grad():
        logits = model(x)
    if logits.shape[1] < 4:
        raise ValueError(f"APGD-T's DLR loss needs at least 4 classes, the model has {logits.shape[1]}")
    ranked = logits.argsort(dim=1, descending=True)
    x_adv = x.clone()
    fooled = logits.argmax(1) != y

    def once(inputs: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return apgd(
            model,
            inputs,
            labels,
            lambda logits, position: dlr(logits, labels[position], target[position]),
            eps=params.eps,
            norm=params.norm,
            steps=params.steps,
            generator=generator,
            box=box,
        )

    for rank in range(1, min(params.targets, logits.shape[1] - 1) + 1):
        rest = ~fooled
        if not rest.any():
            break
        x_adv[rest], fooled[rest] = with_restarts(once, params.restarts, x[rest], y[rest], ranked[rest, rank])
    return x_adv


ENTRY = Attack(
    "apgd_t",
    APGDTargetedParams,
    run,
    "gradient",
    "targeted APGD with the DLR loss (Croce & Hein, ICML 2020)",
    norms=("linf", "l2"),
    quick={"steps": 5, "targets": 3},
)
