"""FMN: "Fast Minimum-norm Adversarial Attacks through Adaptive Norm Constraints" (Pintor, Roli, Brendel
& Biggio, NeurIPS 2021), for L-inf and L2.

A minimum-norm attack: gradient steps on the logit difference max_{i != y} z_i - z_y, inside an
eps-ball whose radius adapts at every step: shrunk by (1 - gamma) around the best adversarial norm while
the point is adversarial, grown by (1 + gamma) while it is not, and, before any adversarial point is
found, set to the current norm plus the linear estimate of the distance to the decision boundary.
The step (the L2-normalised gradient times alpha) and gamma are cosine-annealed from ``alpha_init`` to
alpha_init / 100 and from ``gamma_init`` to ``gamma_final``. Each sample's smallest adversarial
perturbation is kept: robust accuracy as a function of eps follows from those norms (security curves).
With ``eps``, a sample counts as robust when its smallest perturbation is larger than eps.
x (N, C, H, W) inside the box, y (N,) labels; norms in the units of x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from attacks.common import margin
from gkp.foundation.contracts import Attack
from gkp.foundation.schema import at_least, option, positive
from gkp.foundation.threat import PIXELS, Box, loss_and_gradient, lp_norm, per_sample, project


@dataclass(frozen=True)
class FMNParams:
    eps: float | None = option(None, check=at_least(0.0), doc="robust when the smallest perturbation exceeds eps")
    norm: Literal["linf", "l2"] = option("linf", doc="the threat model's norm")
    steps: int = option(100, check=at_least(1), doc="iterations")
    alpha_init: float = option(1.0, check=positive, doc="first step length (of the L2-normalised gradient)")
    gamma_init: float = option(0.05, check=positive, doc="first relative change of the radius")
    gamma_final: float = option(0.001, check=positive, doc="last relative change of the radius")


def _cosine(start: float, end: float, step: int, steps: int) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * step / steps)) / 2


def fmn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: FMNParams, box: Box) -> torch.Tensor:
    x = x.detach()
    norm = params.norm
    dual = "l2" if norm == "l2" else "l1"
    delta = torch.zeros_like(x)
    radius = torch.full((len(x),), float("inf"), device=x.device)
    largest = lp_norm(torch.maximum(x - box.lower, box.upper - x), norm)  # no perturbation in the box is larger
    best_norm, best = largest.clone(), x.clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for step in range(params.steps):
        alpha = _cosine(params.alpha_init, params.alpha_init / 100, step, params.steps)
        gamma = _cosine(params.gamma_init, params.gamma_final, step, params.steps)
        size = lp_norm(delta, norm)
        loss, grad, logits = loss_and_gradient(model, x + delta, lambda z: -margin(z, y))
        adversarial = logits.argmax(1) != y
        smaller = adversarial & (size < best_norm)
        best_norm, best = torch.where(smaller, size, best_norm), torch.where(per_sample(smaller, x), x + delta, best)
        found |= adversarial
        gradient_size = grad.flatten(1).abs().sum(1) if dual == "l1" else grad.flatten(1).norm(dim=1)
        to_boundary = loss.abs() / gradient_size.clamp_min(1e-12)
        radius = torch.where(
            adversarial,
            torch.minimum(radius * (1 - gamma), best_norm),
            torch.where(found, radius * (1 + gamma), size + to_boundary),
        )
        radius = torch.minimum(radius, largest)
        delta = delta + alpha * grad / per_sample(grad.flatten(1).norm(dim=1).clamp_min(1e-12), x)
        delta = box.clamp(x + project(delta, radius, norm)) - x
    return best.detach()


def run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    params: FMNParams,
    generator: torch.Generator | None = None,
    box: Box = PIXELS,
) -> torch.Tensor:
    return fmn(model, x, y, params, box)


ENTRY = Attack(
    "fmn",
    FMNParams,
    run,
    "minimum_norm",
    "Fast minimum-norm attack, L-inf or L2 (Pintor et al., NeurIPS 2021)",
    norms=("linf", "l2"),
    quick={"steps": 30},
)
