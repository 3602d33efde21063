"""FAB-T: the targeted Fast Adaptive Boundary attack, from "Minimally distorted Adversarial Examples with a
Fast Adaptive Boundary Attack" (Croce & Hein, ICML 2020), the third attack of AutoAttack's standard
evaluation.

For each of the ``targets`` classes the model ranks highest on the clean image after the true one, FAB
walks towards the closest point across the decision boundary z_t = z_y. Each step linearises
f = z_t - z_y at the iterate x_k, giving the hyperplane {z : f(x_k) + grad f(x_k) . (z - x_k) = 0}, and
finds the shortest steps (in the norm, keeping inside the box) that reach it from x_k and from the clean
image x_0, d_k and d_0. The next iterate is x_{k+1} = clip((1 - a)(x_k + eta d_k) + a (x_0 + eta d_0)),
a = min(|d_k| / (|d_k| + |d_0|), alpha_max): it leans towards the clean image while the iterate is far
from the boundary, and eta > 1 overshoots it. A misclassified x_{k+1} steps back towards the clean
image, x_0 + beta (x_{k+1} - x_0). The first run of a target starts at x_0; each further restart starts
at a random point at distance eps / 2 from it.

FAB keeps the closest adversarial point it finds; AutoAttack counts a sample as fooled only by one within
eps. So a sample stops at its first adversarial iterate within eps (more steps would only shrink a
perturbation that already counts: the verdicts are the reference's) and that iterate is returned, the
clean image otherwise; each target is tried on the samples not yet fooled, and samples misclassified
clean are left as they are.
Norms L-inf and L2; x (N, C, H, W) inside the box, y (N,) labels; eps in the units of x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gkp.foundation.contracts import Attack
from gkp.foundation.schema import at_least, in_unit_interval, option, positive
from gkp.foundation.threat import PIXELS, Box, Norm, loss_and_gradient, lp_norm, per_sample

SHORTEST_STEP = 1e-8  # the reference's floor on a step's length in the weight a
FAR = 1e18  # the room an unbounded box leaves; finite, so that a zero weight times it stays zero


@dataclass(frozen=True)
class FABTargetedParams:
    eps: float = option(8 / 255, check=at_least(0), doc="radius of the ball an adversarial point must lie in")
    norm: Literal["linf", "l2"] = option("linf", doc="the threat model's norm")
    steps: int = option(100, check=at_least(1), doc="iterations per target and run")
    targets: int = option(9, check=at_least(1), doc="target classes tried, highest-ranked first")
    restarts: int = option(1, check=at_least(1), doc="runs per target; the later ones start at random points")
    alpha_max: float = option(0.1, check=in_unit_interval, doc="largest weight of the step from the clean image")
    eta: float = option(1.05, check=positive, doc="overshoot of the projection onto the boundary")
    beta: float = option(0.9, check=in_unit_interval, doc="backward step towards the clean image when adversarial")


def water_level(weight: torch.Tensor, cap: torch.Tensor, need: torch.Tensor) -> torch.Tensor:
    """Per row of (N, D) ``weight`` >= 0 and ``cap`` >= 0, the smallest level >= 0 at which
    sum_i weight_i min(level, cap_i) reaches ``need`` (N,) >= 0; infinity where it never does."""
    cap, order = cap.sort(dim=1)
    weight = weight.gather(1, order)
    total = weight.sum(dim=1, keepdim=True)
    capped = (weight * cap).cumsum(dim=1)  # what the first k + 1 (smallest-cap) coordinates give, capped
    free = total - weight.cumsum(dim=1)  # the weight of the others
    reached = (capped + cap * free).cummax(dim=1).values  # the sum at level cap_k (cummax: float rounding)
    first = torch.searchsorted(reached, need[:, None].contiguous())
    capped_before = F.pad(capped, (1, 0)).gather(1, first)
    free_before = torch.cat([total, free], dim=1).gather(1, first)
    level = (need[:, None] - capped_before) / free_before.clamp_min(torch.finfo(free.dtype).tiny)
    return torch.where(first < cap.shape[1], level, torch.inf).squeeze(1)


def boundary_step(x: torch.Tensor, w: torch.Tensor, need: torch.Tensor, box: Box, norm: Norm) -> torch.Tensor:
    """Per sample, the shortest step d (in ``norm``) with w . d = ``need`` that keeps x + d in the box; where
    the box allows none, the step that goes as far towards it as the box allows.

    Each coordinate moves in the direction s_i = sign(need w_i), by at most its room r_i to the box's edge.
    L-inf: d_i = s_i min(level, r_i), with the level at which sum_i |w_i| min(level, r_i) = |need|. L2 (the
    KKT conditions): d_i = s_i |w_i| min(level, r_i / |w_i|), with sum_i w_i^2 min(level, r_i / |w_i|) = |need|.
    """
    shape, x, w = x.shape, x.flatten(1), w.flatten(1)
    lower, upper = (torch.as_tensor(bound, dtype=x.dtype, device=x.device) for bound in (box.lower, box.upper))
    lower, upper = (bound.expand(shape).flatten(1) if bound.dim() else bound for bound in (lower, upper))
    direction = w.sign() * torch.where(need < 0, -1.0, 1.0).to(x.dtype)[:, None]
    room = torch.where(direction > 0, upper - x, x - lower).clamp(0, FAR)
    weight, cap = (w.abs(), room) if norm == "linf" else (w * w, room / w.abs())
    cap = torch.where(weight > 0, cap.clamp_max(FAR), 0.0)
    level = water_level(weight, cap, need.abs())
    length = torch.minimum(level[:, None], cap)
    return (direction * (length if norm == "linf" else w.abs() * length)).view(shape)


def _difference(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """z_t - z_y: positive across the boundary."""
    return (logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])).squeeze(1)


def fab_step(
    model: nn.Module,
    x_k: torch.Tensor,
    x_0: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    params: FABTargetedParams,
    box: Box,
) -> torch.Tensor:
    """The next iterate from ``x_k``: the mix of its step and the clean image's step onto the linearised
    boundary, both overshot by eta."""
    value, grad, _ = loss_and_gradient(model, x_k, lambda logits: _difference(logits, y, target))
    # the hyperplane: value + grad . (z - x_k) = 0, reached from z = x_k and from z = x_0
    need_here = -value
    need_clean = -value + (grad * (x_k - x_0)).flatten(1).sum(dim=1)
    steps = boundary_step(
        torch.cat([x_k, x_0]), torch.cat([grad, grad]), torch.cat([need_here, need_clean]), box, params.norm
    )
    here, clean = steps.split(len(x_k))
    length_here = lp_norm(here, params.norm).clamp_min(SHORTEST_STEP)
    length_clean = lp_norm(clean, params.norm).clamp_min(SHORTEST_STEP)
    a = per_sample((length_here / (length_here + length_clean)).clamp(max=params.alpha_max), x_k)
    return box.clamp((1 - a) * (x_k + params.eta * here) + a * (x_0 + params.eta * clean))


def fab(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    start: torch.Tensor,
    params: FABTargetedParams,
    box: Box,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One run from ``start``: (x_adv, fooled), x_adv the first adversarial iterate within eps, or x."""
    x = x.detach()
    x_adv, fooled = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    active = torch.arange(len(x), device=x.device)  # the samples not fooled within eps yet
    x_k = start.detach()
    for _ in range(params.steps):
        x_0, labels = x[active], y[active]
        x_k = fab_step(model, x_k, x_0, labels, target[active], params, box)
        with torch.no_grad():
            adversarial = model(x_k).argmax(1) != labels
        done = adversarial & (lp_norm(x_k - x_0, params.norm) <= params.eps)
        x_adv[active[done]], fooled[active[done]] = x_k[done], True
        x_k = torch.where(per_sample(adversarial, x_k), x_0 + params.beta * (x_k - x_0), x_k)
        active, x_k = active[~done], x_k[~done]
        if not len(active):
            break
    return x_adv, fooled


def random_start(x: torch.Tensor, params: FABTargetedParams, generator: torch.Generator | None, box: Box):
    """A random point at distance eps / 2 from x (uniform direction coordinates for L-inf, Gaussian for L2)."""
    if params.norm == "linf":
        noise = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
    else:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    noise = noise / per_sample(lp_norm(noise, params.norm).clamp_min(1e-12), x)
    return box.clamp(x + params.eps / 2 * noise)


def run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    params: FABTargetedParams,
    generator: torch.Generator | None = None,
    box: Box = PIXELS,
) -> torch.Tensor:
    x = x.detach()
    with torch.no_grad():
        logits = model(x)
    ranked = logits.argsort(dim=1, descending=True)
    x_adv = x.clone()
    fooled = logits.argmax(1) != y
    for rank in range(1, min(params.targets, logits.shape[1] - 1) + 1):
        for restart in range(params.restarts):
            rest = ~fooled
            if not rest.any():
                return x_adv
            start = x[rest] if restart == 0 else random_start(x[rest], params, generator, box)
            x_adv[rest], fooled[rest] = fab(model, x[rest], y[rest], ranked[rest, rank], start, params, box)
    return x_adv


ENTRY = Attack(
    "fab_t",
    FABTargetedParams,
    run,
    "gradient",
    "targeted FAB, adversarials within eps (Croce & Hein, ICML 2020)",
    norms=("linf", "l2"),
    quick={"steps": 10, "targets": 3},
)
