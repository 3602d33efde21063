"""C&W-L2: "Towards Evaluating the Robustness of Neural Networks" (Carlini & Wagner, IEEE S&P 2017).

A minimum-norm attack: it searches for the smallest L2 perturbation that misclassifies. In tanh space,
x_adv = lower + (upper - lower) (tanh(w) + 1) / 2 always lies in the box; Adam minimises
||x_adv - x||_2^2 + c * max(z_y - max_{i != y} z_i, -confidence), and a binary search over c (per
sample) keeps the smallest adversarial perturbation found. Samples already misclassified (perturbation 0)
and samples it cannot fool come back unchanged.
With ``eps``, a sample counts as robust when its smallest perturbation is larger than eps.
x (N, C, H, W) inside the box, y (N,) labels; norms in the units of x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from attacks.common import margin
from gkp.foundation.contracts import Attack
from gkp.foundation.schema import at_least, option, positive
from gkp.foundation.threat import PIXELS, Box, lp_norm


@dataclass(frozen=True)
class CWParams:
    eps: float | None = option(None, check=at_least(0.0), doc="robust when the smallest perturbation exceeds eps")
    norm: Literal["l2"] = option("l2", doc="C&W-L2 minimises the L2 norm")
    steps: int = option(100, check=at_least(1), doc="Adam steps per binary-search step")
    binary_search_steps: int = option(9, check=at_least(1), doc="searches over the constant c")
    initial_const: float = option(0.01, check=positive, doc="first c")
    learning_rate: float = option(0.01, check=positive, doc="Adam step size")
    confidence: float = option(0.0, doc="margin the misclassification must have (kappa)")


def _to_box(w: torch.Tensor, box: Box) -> torch.Tensor:
    return box.lower + (box.upper - box.lower) * (torch.tanh(w) + 1) / 2


def _from_box(x: torch.Tensor, box: Box) -> torch.Tensor:
    unit = ((x - box.lower) / (box.upper - box.lower) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)
    return torch.atanh(unit)


def _fooled(logits: torch.Tensor, y: torch.Tensor, confidence: float) -> torch.Tensor:
    return margin(logits, y) < -confidence if confidence else logits.argmax(1) != y


def carlini_wagner(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: CWParams, box: Box) -> torch.Tensor:
    x = x.detach()
    n = len(x)
    lower = torch.zeros(n, device=x.device)
    upper = torch.full((n,), float("inf"), device=x.device)
    const = torch.full((n,), params.initial_const, device=x.device)
    with torch.no_grad():
        already_fooled = _fooled(model(x), y, params.confidence)
    # the tanh round trip moves pixels at the box's edges by ~1e-6: a sample already fooled keeps x itself
    best_norm = torch.where(already_fooled, 0.0, float("inf"))
    best = x.clone()
    for _ in range(params.binary_search_steps):
        w = _from_box(x, box).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([w], lr=params.learning_rate)
        succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
        for _ in range(params.steps):
            x_adv = _to_box(w, box)
            with torch.enable_grad():
                logits = model(x_adv)
                distance = (x_adv - x).flatten(1).pow(2).sum(dim=1)
                loss = distance + const * margin(logits, y).clamp_min(-params.confidence)
                (w.grad,) = torch.autograd.grad(loss.sum(), w)  # leaves the model's parameter grads alone
            optimizer.step()
            with torch.no_grad():
                fooled = _fooled(logits, y, params.confidence)
                norms = lp_norm(x_adv - x, "l2")
                smaller = fooled & (norms < best_norm)
                best[smaller], best_norm[smaller] = x_adv.detach()[smaller], norms[smaller]
                succeeded |= fooled
        upper = torch.where(succeeded, torch.minimum(upper, const), upper)
        lower = torch.where(succeeded, lower, torch.maximum(lower, const))
        const = torch.where(torch.isinf(upper), const * 10, (lower + upper) / 2)
    return best


def run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    params: CWParams,
    generator: torch.Generator | None = None,
    box: Box = PIXELS,
) -> torch.Tensor:
    return carlini_wagner(model, x, y, params, box)


ENTRY = Attack(
    "cw_l2",
    CWParams,
    run,
    "minimum_norm",
    "Carlini & Wagner L2 (IEEE S&P 2017)",
    norms=("l2",),
    quick={"steps": 30, "binary_search_steps": 3, "learning_rate": 0.05},
)
