"""Shared pieces of gradient attacks: the input gradient of the loss and the L-inf projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(sum of cross-entropy)/dx, without touching the parameters' ``.grad``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip ``x_adv`` into the L-inf ball of radius ``eps`` around ``x`` and into [0, 1]."""
    return torch.clamp(torch.minimum(torch.maximum(x_adv, x - eps), x + eps), 0.0, 1.0)
