"""FGSM: "Explaining and Harnessing Adversarial Examples" (Goodfellow, Shlens & Szegedy, ICLR 2015).

One step of size ``eps`` along the sign of the loss gradient, L-inf norm:
``x_adv = clip_[0,1](x + eps * sign(grad_x CE(f(x), y)))``.
Inputs: x (N, C, H, W) in [0, 1], y (N,) true labels; eps in pixel units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attacks.gradients import input_gradient, project_linf
from gkp.schema import in_unit_interval, option


@dataclass(frozen=True)
class FGSMParams:
    eps: float = option(8 / 255, check=in_unit_interval, doc="L-inf radius in pixel units, e.g. 8/255")


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float) -> torch.Tensor:
    grad = input_gradient(model, x, y)
    return project_linf(x + eps * grad.sign(), x, eps).detach()


def run(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: FGSMParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    return fgsm(model, x, y, eps=params.eps)
