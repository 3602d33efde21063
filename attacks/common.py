"""What the attacks share beyond the threat model (``gkp.foundation.threat``: box, norms, projections, input
gradients): the steepest-ascent step, random starts and the losses (logit margin, DLR).

Shapes: ``x`` is a batch (N, C, H, W); norms, losses and step sizes are per sample, shape (N,).
"""

from __future__ import annotations

import torch

from gkp.foundation.threat import Norm, lp_norm, per_sample


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
