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
since; a halving restarts it from its best point. Every iterate is checked: a sample leaves the batch at
its first misclassified iterate, which is returned (each sample's state is its own, so the others' iterates
do not change, and the passes it would have cost decide nothing: the verdicts are the reference's).
Norms L-inf and L2; x (N, C, H, W) inside the box, y (N,) labels; eps in the units of x.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attacks.common import random_in_ball, steepest_ascent
from gkp.foundation.contracts import Attack
from gkp.foundation.schema import at_least, option
from gkp.foundation.threat import PIXELS, Box, Norm, loss_and_gradient, per_sample, project

# (logits, the samples' positions in the batch) -> per-sample loss to maximise
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

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


@dataclass
class _Samples:
    """One run's per-sample state, over the samples it still attacks (``position`` in the batch)."""

    position: torch.Tensor
    x: torch.Tensor
    x_adv: torch.Tensor
    x_previous: torch.Tensor
    grad: torch.Tensor
    value_previous: torch.Tensor
    x_best: torch.Tensor
    grad_best: torch.Tensor
    best: torch.Tensor
    step_size: torch.Tensor
    rises: torch.Tensor  # steps since the last checkpoint that raised the loss
    best_at_checkpoint: torch.Tensor
    halved_at_checkpoint: torch.Tensor

    @classmethod
    def start(cls, x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, value: torch.Tensor, eps: float):
        n, device = len(x), x.device
        return cls(
            torch.arange(n, device=device),
            x,
            x_adv,
            x_adv,
            grad,
            value,
            x_adv.clone(),
            grad.clone(),
            value.clone(),
            torch.full((n,), 2.0 * eps, device=device, dtype=x.dtype),
            torch.zeros(n, device=device),
            value.clone(),
            torch.ones(n, dtype=torch.bool, device=device),
        )

    def keep(self, kept: torch.Tensor) -> _Samples:
        return _Samples(*(getattr(self, f.name)[kept] for f in fields(self)))

    def next_iterate(self, first: bool, eps: float, norm: Norm, box: Box) -> torch.Tensor:
        """The steepest-ascent step, with momentum after the first, projected onto the ball and the box."""
        x, x_adv = self.x, self.x_adv
        z = box.clamp(
            x + project(x_adv + per_sample(self.step_size, x) * steepest_ascent(self.grad, norm) - x, eps, norm)
        )
        if first:
            return z
        moved = x_adv + MOMENTUM * (z - x_adv) + (1 - MOMENTUM) * (x_adv - self.x_previous)
        return box.clamp(x + project(moved - x, eps, norm))

    def record(self, value: torch.Tensor) -> None:
        """The loss at the new iterate: count a rise, keep the best point."""
        self.rises += (value > self.value_previous).float()
        self.value_previous = value
        improved = value > self.best
        self.x_best[improved], self.grad_best[improved] = self.x_adv[improved], self.grad[improved]
        self.best[improved] = value[improved]

    def checkpoint(self, interval: int) -> None:
        """Halve the steps that should be, and restart those samples from their best point."""
        halve = should_halve(self.rises, interval, self.best, self.best_at_checkpoint, self.halved_at_checkpoint)
        self.step_size[halve] /= 2
        self.x_adv[halve], self.grad[halve] = self.x_best[halve], self.grad_best[halve]
        self.rises.zero_()
        self.best_at_checkpoint, self.halved_at_checkpoint = self.best.clone(), halve


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
    """One run: (x_adv, fooled). x_adv is the first misclassified iterate where one was found, else the
    iterate of highest loss. A sample leaves the batch once misclassified: every sample's state is its
    own, so the others' iterates are the same, and the passes it would cost change no verdict."""
    x = x.detach()
    x_adv = box.clamp(x + random_in_ball(x, eps, norm, generator))
    everyone = torch.arange(len(x), device=x.device)
    value, grad, logits = loss_and_gradient(model, x_adv, lambda z: loss(z, everyone))
    fooled = logits.argmax(1) != y
    result = x_adv.clone()
    s = _Samples.start(x, x_adv, grad, value, eps).keep(~fooled)
    marks, last_mark = checkpoints(steps), 0
    for iteration in range(1, steps + 1):
        if not len(s.position):
            break
        s.x_previous, s.x_adv = s.x_adv, s.next_iterate(iteration == 1, eps, norm, box)
        value, s.grad, logits = loss_and_gradient(model, s.x_adv, lambda z, at=s.position: loss(z, at))
        now_fooled = logits.argmax(1) != y[s.position]
        result[s.position[now_fooled]], fooled[s.position[now_fooled]] = s.x_adv[now_fooled], True
        s.record(value)
        if iteration in marks:
            s.checkpoint(iteration - last_mark)
            last_mark = iteration
        if now_fooled.any():
            s = s.keep(~now_fooled)
    result[s.position] = s.x_best
    return result.detach(), fooled


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
        cross_entropy = lambda logits, position: F.cross_entropy(logits, labels[position], reduction="none")  # noqa: E731
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


ENTRY = Attack(
    "apgd_ce",
    APGDParams,
    run,
    "gradient",
    "APGD with cross-entropy (Croce & Hein, ICML 2020)",
    norms=("linf", "l2"),
    quick={"steps": 10},
)
