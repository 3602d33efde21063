"""PGD: "Towards Deep Learning Models Resistant to Adversarial Attacks" (Madry et al., ICLR 2018).

``steps`` iterations of ``x <- Proj(x + step_size * u)``, u the steepest-ascent unit step of the
cross-entropy loss for the norm (its sign for L-inf, its L2-normalised gradient for L2), Proj the
projection onto the ``eps`` ball around the clean image and onto the image box. With ``random_start``
each run starts at a uniformly random point of the ball; with ``restarts`` > 1 the samples still
classified correctly are attacked again from a new random point.
Inputs: x (N, C, H, W) inside the box, y (N,) labels; eps and step_size in the units of x
(step_size defaults to eps / 4).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from attacks.common import random_in_ball, steepest_ascent
from gkp.foundation.contracts import Attack
from gkp.foundation.schema import at_least, option, positive
from gkp.foundation.threat import PIXELS, Box, Norm, input_gradient, project


@dataclass(frozen=True)
class PGDParams:
    eps: float = option(8 / 255, check=at_least(0), doc="radius of the ball")
    norm: Literal["linf", "l2"] = option("linf", doc="the threat model's norm")
    step_size: float | None = option(None, check=positive, doc="step per iteration; default eps / 4")
    steps: int = option(10, check=at_least(1), doc="iterations")
    random_start: bool = option(True, doc="start from a uniform random point in the eps-ball")
    restarts: int = option(1, check=at_least(1), doc="runs; later ones attack only the samples not yet fooled")

    def resolved(self) -> PGDParams:
        return self if self.step_size is not None else replace(self, step_size=self.eps / 4)


def pgd_once(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Norm,
    step_size: float,
    steps: int,
    random_start: bool,
    generator: torch.Generator | None,
    box: Box,
) -> torch.Tensor:
    x = x.detach()
    x_adv = box.clamp(x + random_in_ball(x, eps, norm, generator)) if random_start else x
    for _ in range(steps):
        step = steepest_ascent(input_gradient(model, x_adv, y), norm)
        x_adv = box.clamp(x + project(x_adv + step_size * step - x, eps, norm)).detach()
    return x_adv


def run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    params: PGDParams,
    generator: torch.Generator | None = None,
    box: Box = PIXELS,
) -> torch.Tensor:
    params = params.resolved()
    settings = dict(
        eps=params.eps,
        norm=params.norm,
        step_size=params.step_size,
        steps=params.steps,
        random_start=params.random_start,
        generator=generator,
        box=box,
    )
    x_adv = pgd_once(model, x, y, **settings)
    for _ in range(params.restarts - 1):
        with torch.no_grad():
            robust = model(x_adv).argmax(1) == y
        if not robust.any():
            break
        x_adv[robust] = pgd_once(model, x[robust], y[robust], **settings)
    return x_adv


ENTRY = Attack(
    "pgd",
    PGDParams,
    run,
    "gradient",
    "PGD, L-inf or L2 (Madry et al., ICLR 2018)",
    norms=("linf", "l2"),
    quick={"steps": 5},
)
