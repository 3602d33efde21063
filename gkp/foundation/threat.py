"""The threat model the attacks and the evaluator share: the box images live in, L-inf / L2 norms and
projections onto their balls, and the input gradient of a loss.

Shapes: ``x`` is a batch (N, C, H, W); norms, losses and step sizes are per sample, shape (N,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["linf", "l2"]


@dataclass(frozen=True)
class Box:
    """The valid image range: [0, 1] pixels, or a normalized range (floats or (1, C, 1, 1) tensors)."""

    lower: float | torch.Tensor = 0.0
    upper: float | torch.Tensor = 1.0

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.lower, self.upper)


PIXELS = Box(0.0, 1.0)


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) values shaped to broadcast against a batch like ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def lp_norm(delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(dim=1)


def project(delta: torch.Tensor, eps: float | torch.Tensor, norm: Norm) -> torch.Tensor:
    """The perturbation scaled or clipped back into the ``norm`` ball of radius ``eps``."""
    if norm == "linf":
        bound = per_sample(eps, delta) if torch.is_tensor(eps) else eps
        return torch.clamp(delta, -bound, bound)
    scale = torch.clamp(torch.as_tensor(eps, device=delta.device) / lp_norm(delta, "l2").clamp_min(1e-12), max=1.0)
    return delta * per_sample(scale, delta)


def loss_and_gradient(model: nn.Module, x: torch.Tensor, loss) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-sample loss, its input gradient, logits) of ``loss(logits)``, without touching parameter grads."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        values = loss(logits)
        (grad,) = torch.autograd.grad(values.sum(), x)
    return values.detach(), grad, logits.detach()


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(sum of cross-entropy)/dx."""
    return loss_and_gradient(model, x, lambda logits: F.cross_entropy(logits, y, reduction="none"))[1]
