"""FGSM: "Explaining and Harnessing Adversarial Examples" (Goodfellow, Shlens & Szegedy, ICLR 2015).

One step of size ``eps`` along the sign of the loss gradient, L-inf norm:
``x_adv = clip_box(x + eps * sign(grad_x CE(f(x), y)))``.
Inputs: x (N, C, H, W) inside the box, y (N,) labels (the true ones, or the model's predictions in the
paper's mode); eps in the units of x (pixels, or normalized-input units).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from gkp.foundation.contracts import Attack
from gkp.foundation.schema import in_unit_interval, option
from gkp.foundation.threat import PIXELS, Box, input_gradient


@dataclass(frozen=True)
class FGSMParams:
    eps: float = option(8 / 255, check=in_unit_interval, doc="L-inf radius, e.g. 8/255")
    norm: Literal["linf"] = option("linf", doc="FGSM is an L-inf attack")


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, box: Box = PIXELS) -> torch.Tensor:
    return box.clamp(x + eps * input_gradient(model, x, y).sign()).detach()


def run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    params: FGSMParams,
    generator: torch.Generator | None = None,
    box: Box = PIXELS,
) -> torch.Tensor:
    return fgsm(model, x, y, eps=params.eps, box=box)


ENTRY = Attack(
    "fgsm",
    FGSMParams,
    run,
    "gradient",
    "FGSM (Goodfellow et al., ICLR 2015)",
    norms=("linf",),
    quick={},
)
