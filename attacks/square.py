"""Square attack: "Square Attack: a query-efficient black-box adversarial attack via random search"
(Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), AutoAttack's black-box member. It uses only the
model's outputs, never a gradient, so it is immune to gradient masking.

Random search on the margin loss z_y - max_{i != y} z_i (a sample is left alone once its margin is at
most 0, as in the reference code): each query changes a random square window of side
s = round(sqrt(p * H * W)), p falling from ``p_init`` by halves after queries 10, 50, 200, 500, 1000,
2000, 4000, 6000 and 8000, and keeps the change where the margin drops. The window's corner is drawn as
the reference draws it, from [0, H - s) x [0, W - s).
With ``rescale_schedule`` (the Square paper's code) those marks are fractions of 10,000 of the query
budget; without it (AutoAttack's standard evaluation, ``resc_schedule=False``) they are query counts,
whatever the budget.

- L-inf: start from vertical stripes of +-eps; a query sets the window to +-eps, one sign per channel.
- L2: start from tiles of pseudo-Gaussian patterns scaled to norm eps; a query replaces the content of
  one window (and empties a second one) by a new pseudo-Gaussian pattern blended with the old content,
  keeping the perturbation's norm at most eps.

x (N, C, H, W) inside the box, y (N,) labels; eps in the units of x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from attacks.common import margin
from gkp.contracts import Attack
from gkp.schema import at_least, in_unit_interval, option
from gkp.threat import PIXELS, Box, lp_norm, per_sample, project

HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


@dataclass(frozen=True)
class SquareParams:
    eps: float = option(8 / 255, check=at_least(0), doc="radius of the ball")
    norm: Literal["linf", "l2"] = option("linf", doc="the threat model's norm")
    queries: int = option(5000, check=at_least(1), doc="queries per sample at most")
    p_init: float = option(0.8, check=in_unit_interval, doc="initial fraction of the image a window covers")
    rescale_schedule: bool = option(
        True, doc="halve the window at fractions of the budget (Square's code) or at query counts (AutoAttack's)"
    )


def window_side(p_init: float, query: int, queries: int, height: int, width: int, rescale: bool = True) -> int:
    progress = int(query / queries * 10000) if rescale else query
    p = p_init / 2 ** sum(progress > mark for mark in HALVINGS)
    return min(max(round(math.sqrt(p * height * width)), 1), max(min(height, width) - 1, 1))


def _random_signs(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator, device=like.device).to(like.dtype) * 2 - 1


def _position(side: int, extent: int, generator: torch.Generator | None, device: torch.device) -> int:
    """A window's first row (or column), drawn from [0, extent - side) as the reference code draws it, so a
    window never reaches the last row or column (which keep what the initialisation gave them)."""
    return int(torch.randint(0, max(extent - side, 1), (1,), generator=generator, device=device))


def pseudo_gaussian(side: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(side, side) pattern: two halves of concentric rings weighted 1/(ring+1)^2, of opposite signs,
    transposed half of the time; unit L2 norm."""

    def rings(height: int, width: int) -> torch.Tensor:
        rows = torch.arange(height, device=like.device, dtype=like.dtype) - (height - 1) / 2
        cols = torch.arange(width, device=like.device, dtype=like.dtype) - (width - 1) / 2
        ring = torch.maximum(rows.abs()[:, None], cols.abs()[None, :]).floor()
        outermost = int(ring.max()) if ring.numel() else 0
        weights = torch.tensor(
            [sum(1 / (k + 1) ** 2 for k in range(r, outermost + 1)) for r in range(outermost + 1)],
            device=like.device,
            dtype=like.dtype,
        )
        return weights[ring.long()]

    half = side // 2
    pattern = torch.cat([rings(side, half), -rings(side, side - half)], dim=1) if half else rings(side, side)
    if int(torch.randint(0, 2, (1,), generator=generator, device=like.device)):
        pattern = pattern.T
    return pattern / pattern.norm().clamp_min(1e-12)


def _margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return margin(model(x), y)


def _initial_linf(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    return eps * _random_signs((x.shape[0], x.shape[1], 1, x.shape[3]), x, generator)


def _initial_l2(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    n, channels, height, width = x.shape
    tile = max(min(height, width) // 5, 3)
    delta = torch.zeros_like(x)
    for top in range(0, height - tile + 1, tile):
        for left in range(0, width - tile + 1, tile):
            signs = _random_signs((n, channels, 1, 1), x, generator)
            delta[:, :, top : top + tile, left : left + tile] = signs * pseudo_gaussian(tile, x, generator)
    return delta * per_sample(eps / lp_norm(delta, "l2").clamp_min(1e-12), x)


def _propose_linf(delta: torch.Tensor, eps: float, side: int, generator: torch.Generator | None) -> torch.Tensor:
    top = _position(side, delta.shape[2], generator, delta.device)
    left = _position(side, delta.shape[3], generator, delta.device)
    proposal = delta.clone()
    proposal[:, :, top : top + side, left : left + side] = eps * _random_signs(
        delta.shape[:2] + (1, 1), delta, generator
    )
    return proposal


def _propose_l2(delta: torch.Tensor, eps: float, side: int, generator: torch.Generator | None) -> torch.Tensor:
    n, channels, height, width = delta.shape
    first = (_position(side, height, generator, delta.device), _position(side, width, generator, delta.device))
    second = first
    for _ in range(10):  # a second window apart from the first, where the image leaves room for one
        second = (_position(side, height, generator, delta.device), _position(side, width, generator, delta.device))
        if abs(second[0] - first[0]) >= side or abs(second[1] - first[1]) >= side:
            break
    windows = [(slice(top, top + side), slice(left, left + side)) for top, left in (first, second)]
    union = torch.zeros(height, width, dtype=torch.bool, device=delta.device)
    for rows, cols in windows:
        union[rows, cols] = True
    spare = (eps**2 - lp_norm(delta, "l2") ** 2).clamp_min(0) / channels  # (N,)
    budget = ((delta * union).flatten(2).norm(dim=2) ** 2 + spare[:, None]).sqrt()  # (N, C)
    old = delta[:, :, windows[0][0], windows[0][1]]
    old = old / old.flatten(2).norm(dim=2).clamp_min(1e-12)[:, :, None, None]
    fresh = _random_signs((n, channels, 1, 1), delta, generator) * pseudo_gaussian(side, delta, generator)
    blend = fresh + old
    blend = blend / blend.flatten(2).norm(dim=2).clamp_min(1e-12)[:, :, None, None] * budget[:, :, None, None]
    proposal = delta.clone()
    proposal[:, :, windows[1][0], windows[1][1]] = 0
    proposal[:, :, windows[0][0], windows[0][1]] = blend
    return project(proposal, eps, "l2")


def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: Literal["linf", "l2"],
    queries: int,
    p_init: float,
    generator: torch.Generator | None,
    box: Box,
    rescale_schedule: bool = True,
) -> torch.Tensor:
    x = x.detach()
    initial = _initial_linf if norm == "linf" else _initial_l2
    propose = _propose_linf if norm == "linf" else _propose_l2
    x_best = box.clamp(x + initial(x, eps, generator))
    best = _margin(model, x_best, y)
    for query in range(queries):
        active = torch.nonzero(best > 0).squeeze(1)
        if active.numel() == 0:
            break
        side = window_side(p_init, query, queries, x.shape[2], x.shape[3], rescale_schedule)
        delta = propose(x_best[active] - x[active], eps, side, generator)
        candidate = box.clamp(x[active] + delta)
        value = _margin(model, candidate, y[active])
        better = value < best[active]
        x_best[active[better]] = candidate[better]
        best[active[better]] = value[better]
    return x_best


def run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    params: SquareParams,
    generator: torch.Generator | None = None,
    box: Box = PIXELS,
) -> torch.Tensor:
    return square(
        model,
        x,
        y,
        eps=params.eps,
        norm=params.norm,
        queries=params.queries,
        p_init=params.p_init,
        generator=generator,
        box=box,
        rescale_schedule=params.rescale_schedule,
    )


ATTACK = Attack(
    "square",
    SquareParams,
    run,
    "query",
    "Square attack, L-inf or L2 (Andriushchenko et al., ECCV 2020)",
    norms=("linf", "l2"),
    quick={"queries": 150},
)
