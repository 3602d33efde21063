"""PGD, L-inf: "Towards Deep Learning Models Resistant to Adversarial Attacks" (Madry et al., ICLR 2018).

``steps`` iterations of ``x <- Proj(x + step_size * sign(grad_x CE(f(x), y)))``, where Proj clips into the
L-inf ball of radius ``eps`` around the clean image and into [0, 1]. With ``random_start`` the first
iterate is drawn uniformly from the ball (using the given generator). Inputs: x (N, C, H, W) in [0, 1],
y (N,) true labels; eps and step_size in pixel units (step_size defaults to eps / 4).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from attacks.gradients import input_gradient, project_linf
from gkp.schema import at_least, in_unit_interval, option, positive


@dataclass(frozen=True)
class PGDParams:
    eps: float = option(8 / 255, check=in_unit_interval, doc="L-inf radius in pixel units")
    step_size: float | None = option(None, check=positive, doc="step per iteration; default eps / 4")
    steps: int = option(10, check=at_least(1), doc="iterations")
    random_start: bool = option(True, doc="start from a uniform random point in the eps-ball")

    def resolved(self) -> PGDParams:
        return self if self.step_size is not None else replace(self, step_size=self.eps / 4)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    x = x.detach()
    x_adv = x
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = project_linf(x + (2 * noise - 1) * eps, x, eps)
    for _ in range(steps):
        grad = input_gradient(model, x_adv, y)
        x_adv = project_linf(x_adv + step_size * grad.sign(), x, eps).detach()
    return x_adv


def run(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: PGDParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    params = params.resolved()
    return pgd(
        model,
        x,
        y,
        eps=params.eps,
        step_size=params.step_size,
        steps=params.steps,
        random_start=params.random_start,
        generator=generator,
    )
