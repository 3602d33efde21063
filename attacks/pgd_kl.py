"""PGD on the KL divergence from the clean prediction: the inner maximisation of TRADES ("Theoretically
Principled Trade-off between Robustness and Accuracy", Zhang et al., ICML 2019).

Starting from ``x + init_std * N(0, 1)``, ``steps`` iterations of
``x' <- Proj(x' + step_size * sign(grad_x' KL(p(x) || p(x'))))``, with ``p`` the model's softmax and
``p(x)`` computed once, without gradients; Proj projects onto the L-inf ``eps`` ball around ``x`` and onto
the image box. The labels are not read: the attack pushes the prediction away from the clean one,
whatever it is. Defaults are TRADES's CIFAR-10 settings (eps 0.031, step 0.007, 10 steps, init 0.001).
Inputs: x (N, C, H, W) inside the box; eps and step_size in the units of x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gkp.foundation.contracts import Attack
from gkp.foundation.schema import at_least, option, positive
from gkp.foundation.threat import PIXELS, Box, loss_and_gradient, project


@dataclass(frozen=True)
class PGDKLParams:
    eps: float = option(0.031, check=at_least(0), doc="L-inf radius (TRADES: 0.031)")
    norm: Literal["linf"] = option("linf", doc="TRADES's inner maximisation is L-inf")
    step_size: float = option(0.007, check=positive, doc="step per iteration (TRADES: 0.007)")
    steps: int = option(10, check=at_least(1), doc="iterations (TRADES: 10)")
    init_std: float = option(0.001, check=at_least(0), doc="std of the Gaussian start around the clean image")


def kl_from(clean_probabilities: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p || softmax(logits)), p the clean probabilities."""
    return F.kl_div(F.log_softmax(logits, dim=1), clean_probabilities, reduction="none").sum(dim=1)


def run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    params: PGDKLParams,
    generator: torch.Generator | None = None,
    box: Box = PIXELS,
) -> torch.Tensor:
    x = x.detach()
    with torch.no_grad():
        clean = F.softmax(model(x).float(), dim=1)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = box.clamp(x + params.init_std * noise)
    for _ in range(params.steps):
        grad = loss_and_gradient(model, x_adv, lambda logits: kl_from(clean, logits.float()))[1]
        x_adv = box.clamp(x + project(x_adv + params.step_size * grad.sign() - x, params.eps, "linf")).detach()
    return x_adv


ENTRY = Attack(
    "pgd_kl",
    PGDKLParams,
    run,
    "gradient",
    "PGD on the KL divergence from the clean prediction, TRADES's inner maximisation (Zhang et al., ICML 2019)",
    norms=("linf",),
    quick={"steps": 3},
)
