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
- L2: start from a centred 5 x 5 layout of tiles of side min(H, W) // 5, each a pseudo-Gaussian pattern
  with one sign per channel, scaled to norm eps. A query uses an odd window side of at least 3; it draws
  two windows, empties the second and fills the first, per channel, with a new pseudo-Gaussian pattern
  blended with the window's old content, given the image's norm inside both windows plus an even share
  of what the ball leaves; the whole perturbation is then scaled to norm exactly eps. All as in
  AutoAttack's code (its ``square.py``).

x (N, C, H, W) inside the box, y (N,) labels; eps in the units of x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from attacks.common import margin
from gkp.foundation.contracts import Attack
from gkp.foundation.schema import at_least, in_unit_interval, option
from gkp.foundation.threat import PIXELS, Box, lp_norm, per_sample

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


def _window(side: int, delta: torch.Tensor, generator: torch.Generator | None) -> tuple[slice, slice]:
    """The rows and columns of a random (side, side) window of the images, one for the whole batch."""
    top = _position(side, delta.shape[2], generator, delta.device)
    left = _position(side, delta.shape[3], generator, delta.device)
    return slice(top, top + side), slice(left, left + side)


def _rings(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(height, width) block of concentric square rings around the cell (height // 2, width // 2): a cell r
    rings out holds the sum of 1/(k+1)^2 for k from r to max(height, width) // 2; unit L2 norm."""
    rows = (torch.arange(height, device=like.device) - height // 2).abs()
    cols = (torch.arange(width, device=like.device) - width // 2).abs()
    ring = torch.maximum(rows[:, None], cols[None, :])
    outermost = max(height, width) // 2
    terms = 1 / torch.arange(1, outermost + 2, device=like.device, dtype=like.dtype) ** 2
    weights = terms.flip(0).cumsum(0).flip(0)  # weights[r] = terms[r] + ... + terms[outermost]
    block = weights[ring]
    return block / block.norm().clamp_min(1e-12)


def pseudo_gaussian(side: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(side, side) pattern of the reference code: rings over the top side // 2 rows, minus rings over the
    rest (each half of unit norm), transposed half of the time; unit L2 norm."""
    half = side // 2
    pattern = torch.cat([_rings(half, side, like), -_rings(side - half, side, like)])
    if int(torch.randint(0, 2, (1,), generator=generator, device=like.device)):
        pattern = pattern.T
    return pattern / pattern.norm().clamp_min(1e-12)


def _margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return margin(model(x), y)


def _initial_linf(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    return eps * _random_signs((x.shape[0], x.shape[1], 1, x.shape[3]), x, generator)


def _rescaled(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """``delta`` scaled to L2 norm exactly ``eps`` per sample."""
    return delta * per_sample(eps / lp_norm(delta, "l2").clamp_min(1e-12), delta)


def _tile_starts(extent: int, tile: int) -> range:
    """Where the initial tiles start along a side: as the reference lays five of them out, centred, and as
    many more as fit."""
    return range(max((extent - 5 * tile) // 2, 0), extent - tile + 1, tile)


def _initial_l2(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    n, channels, height, width = x.shape
    tile = max(min(height, width) // 5, 1)
    delta = torch.zeros_like(x)
    for top in _tile_starts(height, tile):
        for left in _tile_starts(width, tile):
            signs = _random_signs((n, channels, 1, 1), x, generator)
            delta[:, :, top : top + tile, left : left + tile] = signs * pseudo_gaussian(tile, x, generator)
    return _rescaled(delta, eps)


def _propose_linf(delta: torch.Tensor, eps: float, side: int, generator: torch.Generator | None) -> torch.Tensor:
    rows, cols = _window(side, delta, generator)
    proposal = delta.clone()
    proposal[:, :, rows, cols] = eps * _random_signs(delta.shape[:2] + (1, 1), delta, generator)
    return proposal


def _odd_side(side: int, height: int, width: int) -> int:
    """The reference's L2 window: odd and at least 3 (where the image has room for it)."""
    side = max(side, 3)
    return min(side + 1 - side % 2, height, width)


def _unit_per_channel(window: torch.Tensor) -> torch.Tensor:
    """(N, C, s, s) scaled to unit L2 norm per sample and channel (a zero window stays zero)."""
    return window / window.flatten(2).norm(dim=2).clamp_min(1e-12)[:, :, None, None]


def _propose_l2(delta: torch.Tensor, eps: float, side: int, generator: torch.Generator | None) -> torch.Tensor:
    n, channels, height, width = delta.shape
    side = _odd_side(side, height, width)
    windows = [_window(side, delta, generator), _window(side, delta, generator)]  # they may overlap
    union = torch.zeros(height, width, dtype=torch.bool, device=delta.device)
    for rows, cols in windows:
        union[rows, cols] = True
    spare = (eps**2 - lp_norm(delta, "l2") ** 2).clamp_min(0) / channels  # (N,)
    budget = (lp_norm(delta * union, "l2") ** 2 + spare).sqrt()  # (N,): the image's norm inside both windows
    old = _unit_per_channel(delta[:, :, windows[0][0], windows[0][1]])
    fresh = _random_signs((n, channels, 1, 1), delta, generator) * pseudo_gaussian(side, delta, generator)
    blend = _unit_per_channel(fresh + old) * budget[:, None, None, None]
    proposal = delta.clone()
    proposal[:, :, windows[1][0], windows[1][1]] = 0
    proposal[:, :, windows[0][0], windows[0][1]] = blend
    return _rescaled(proposal, eps)


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


ENTRY = Attack(
    "square",
    SquareParams,
    run,
    "query",
    "Square attack, L-inf or L2 (Andriushchenko et al., ECCV 2020)",
    norms=("linf", "l2"),
    quick={"queries": 150},
)
