"""APGD-CE: Auto-PGD with the cross-entropy loss, from "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks" (Croce & Hein, ICML 2020), the first attack of
AutoAttack.

PGD with momentum (0.75) whose step size needs no tuning: it starts at 2 eps and may be halved at
checkpoints, the reference code's integer form of the paper's w_j = ceil(p_j N) (p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)): the first after floor(0.22 N) steps, each following
interval floor(0.03 N) shorter, down to floor(0.06 N) (each at least 1); for N = 100 steps: 22, 41, 57, 70,
80, 87, 93, 99. A sample's step is halved when at most rho = 75% of the steps since the last checkpoint
raised its loss above the previous iterate's (the first step counts against the starting point), or
when its step was not halved at the last checkpoint (never at the first) and its best loss has not grown
since; a halving restarts it from its best point. Every iterate is checked, and any misclassified one is
kept.
Norms L-inf and L2; x (N, C, H, W) inside the box, y (N,) labels; eps in the units of x.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attacks.common import random_in_ball, steepest_ascent
from gkp.contracts import Attack
from gkp.schema import at_least, option
from gkp.threat import PIXELS, Box, Norm, loss_and_gradient, per_sample, project

Loss = Callable[[torch.Tensor], torch.Tensor]  # logits -> per-sample loss to maximise

MOMENTUM = 0.75
RHO = 0.75


@dataclass(frozen=True)
class APGDParams:
    eps: float = option(8 / 255, check=at_least(0), doc="radius of the ball")
    norm: Literal["linf", "l2"] = option("linf", doc="the threat model's norm")
    steps: int = option(100, check=at_least(1), doc="iterations per run")
    restarts: int = option(1, check=at_least(1), doc="runs from new random points for the samples not yet fooled")


def checkpoints(steps: int) -> list[int]:
    """The iterations (1-based) after which the step size may be halved."""
    interval, shrink, shortest = (max(int(fraction * steps), 1) for fraction in (0.22, 0.03, 0.06))
    marks = [interval]
    while marks[-1] + max(interval - shrink, shortest) <= steps:
        interval = max(interval - shrink, shortest)
        marks.append(marks[-1] + interval)
    return marks


def should_halve(
    rises: torch.Tensor, interval: int, best: torch.Tensor, best_before: torch.Tensor, halved_before: torch.Tensor
) -> torch.Tensor:
    """Per sample, at a checkpoint: too few of the ``interval`` steps since the last one raised the loss, or
    the step was not halved last time and the best loss has not grown since."""
    return (rises <= RHO * interval) | (~halved_before & (best <= best_before))


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: Loss,
    *,
    eps: float,
    norm: Norm,
    steps: int,
    generator: torch.Generator | None,
    box: Box,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One run: (x_adv, fooled). x_adv is a misclassified iterate where one was found, else the iterate
    of highest loss."""
    x = x.detach()
    step_size = torch.full((len(x),), 2.0 * eps, device=x.device, dtype=x.dtype)
    x_adv = box.clamp(x + random_in_ball(x, eps, norm, generator))
    value, grad, logits = loss_and_gradient(model, x_adv, loss)
    fooled = logits.argmax(1) != y
    x_fooling, x_best, grad_best, best = x_adv.clone(), x_adv.clone(), grad.clone(), value.clone()
    x_previous, value_previous = x_adv, value
    rises = torch.zeros(len(x), device=x.device)
    best_at_checkpoint = best.clone()
    halved_at_checkpoint = torch.ones(len(x), dtype=torch.bool, device=x.device)
    marks, last_mark = checkpoints(steps), 0
    for iteration in range(1, steps + 1):
        z = box.clamp(x + project(x_adv + per_sample(step_size, x) * steepest_ascent(grad, norm) - x, eps, norm))
        if iteration > 1:
            moved = x_adv + MOMENTUM * (z - x_adv) + (1 - MOMENTUM) * (x_adv - x_previous)
            z = box.clamp(x + project(moved - x, eps, norm))
        x_previous, x_adv = x_adv, z
        value, grad, logits = loss_and_gradient(model, x_adv, loss)
        now_fooled = logits.argmax(1) != y
        x_fooling[now_fooled] = x_adv[now_fooled]
        fooled |= now_fooled
        rises += (value > value_previous).float()
        value_previous = value
        improved = value > best
        x_best[improved], grad_best[improved], best[improved] = x_adv[improved], grad[improved], value[improved]
        if iteration in marks:
            halve = should_halve(rises, iteration - last_mark, best, best_at_checkpoint, halved_at_checkpoint)
            step_size[halve] /= 2
            x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
            rises.zero_()
            best_at_checkpoint, halved_at_checkpoint, last_mark = best.clone(), halve, iteration
    return torch.where(per_sample(fooled, x), x_fooling, x_best).detach(), fooled


def with_restarts(
    run: Callable[..., tuple[torch.Tensor, torch.Tensor]], restarts: int, *batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeat ``run(*batch)`` (x, y and any per-sample tensors) on the samples not yet fooled."""
    x_adv, fooled = run(*batch)
    for _ in range(restarts - 1):
        if fooled.all():
            break
        rest = ~fooled
        x_adv[rest], fooled[rest] = run(*(tensor[rest] for tensor in batch))
    return x_adv, fooled


def run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    params: APGDParams,
    generator: torch.Generator | None = None,
    box: Box = PIXELS,
) -> torch.Tensor:
    def once(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cross_entropy = lambda logits: F.cross_entropy(logits, labels, reduction="none")  # noqa: E731
        return apgd(
            model,
            inputs,
            labels,
            cross_entropy,
            eps=params.eps,
            norm=params.norm,
            steps=params.steps,
            generator=generator,
            box=box,
        )

    return with_restarts(once, params.restarts, x, y)[0]


ATTACK = Attack(
    "apgd_ce",
    APGDParams,
    run,
    "gradient",
    "APGD with cross-entropy (Croce & Hein, ICML 2020)",
    norms=("linf", "l2"),
    quick={"steps": 10},
)
