"""What the attacks share: the box images live in, L-inf / L2 norms and projections, random starts, the
losses (cross-entropy, logit margin, DLR) and their input gradients.

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


def steepest_ascent(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The unit step of the norm along the gradient: its sign (L-inf) or its direction (L2)."""
    if norm == "linf":
        return grad.sign()
    return grad / per_sample(lp_norm(grad, "l2").clamp_min(1e-12), grad)


def random_in_ball(x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator | None) -> torch.Tensor:
    """A uniformly random point of the ``norm`` ball of radius ``eps`` (the shape of ``x``)."""
    if norm == "linf":
        return (2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / per_sample(lp_norm(direction, "l2").clamp_min(1e-12), x)
    radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1 / x[0].numel())
    return direction * per_sample(radius * eps, x)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logit of the label minus the largest other logit: negative when the sample is misclassified."""
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return logits.gather(1, y[:, None]).squeeze(1) - other


def dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """The difference-of-logits-ratio loss of Croce & Hein (ICML 2020), to be maximised: untargeted,
    -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3); targeted, -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    ranked = logits.sort(dim=1, descending=True).values
    if target is None:
        return -margin(logits, y) / (ranked[:, 0] - ranked[:, 2] + 1e-12)
    difference = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)
    return -difference / (ranked[:, 0] - 0.5 * (ranked[:, 2] + ranked[:, 3]) + 1e-12)


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
