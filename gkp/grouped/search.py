"""Grouped-kernel selection: SR-GKP's smoothness-aware beam search, vectorised (SR-GKP, Zhong et al.,
NeurIPS 2023, section 3.2.2 and appendix C.3; exactly as the authors' code computes it, see
shared/specs/srgkp.md).

For one conv, every filter group g has n grouped kernels (GKs) with similarities ``sim[g]`` (n x n,
1 - euclidean distance) and smoothness ``smooth[g]``. From every start GK the search grows branches
(ordered tuples of GKs): each branch is extended by the ``beam_width`` GKs least similar to it in sum,
and every ``check_every`` extensions the beam is re-ranked by a mix of cost rank and smoothness rank
and cut back to ``beam_width`` branches. Among all final branches of all starts, the one of lowest cost
(or smoothness) is kept. Cost of a branch B, lower is better::

    inner(B) - beta * outer(B),  inner = sum of sim over pairs of B (itertools.combinations order),
                                 outer = sum over pruned GKs p (ascending) of the sum of their
                                         ``match`` largest sims to B (the largest one by default)

with beta = C(|B|, 2) / (pruned * match) fixed at its first evaluation within the layer's search.

Every start of every group is searched at once: the state is a batch of beams of shape
(groups * starts, branches, ...). Sums stay left to right in the reference's order (``running_sum``;
the branch-to-candidate gains and the branch smoothness are extended one term at a time, which is the
same order), sorts are stable, and nothing is de-duplicated, so the result is bit-for-bit the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gkp.grouped.smoothness import running_sum


@dataclass(frozen=True)
class SearchSettings:
    keep: int  # GKs kept per group
    beam_width: int = 2
    check_every: int | None = 3  # None: never re-rank (with beam_width 1, a plain greedy search)
    alpha: float = 0.9  # weight of the cost rank against the smoothness rank
    outer_in_beam: bool = True  # re-ranking cost includes the pruned-kernel term
    final_select: Literal["cost", "smoothness"] = "cost"
    match: int = 1  # kept GKs each pruned GK is compared with in the outer term
    beta: float | None = None  # None: "auto", C(|B|, 2) / (pruned * match) at the first evaluation


@dataclass
class Beams:
    """A batch of beams, one row per (group, start): branches and what extending them needs.

    Children follow their parent (child = parent * width + k), so what a branch inherits is stored once
    per ancestor and indexed with integer division: member column l has shape (R, B_l), branch i's l-th
    member being entry i // (B / B_l); the pair similarities of the inner cost are then gathered once per
    distinct pair, not once per branch. Likewise the gains are stored for the parents only (+inf at the
    parents' members); a branch's own gains, parent gains + sim[last member], are formed when it is
    extended, so the branches a re-ranking drops never cost a gain vector.
    """

    group: np.ndarray  # (R,) group of each row
    columns: list[np.ndarray]  # member columns, coarse to fine; the last one has B entries
    parent_gains: np.ndarray  # (R, B_p, n) sum of sim[b][c] over the parent's members b, left to right
    smoothness: np.ndarray  # (R, B) sum of the branch's GK smoothness, left to right
    closest: np.ndarray  # (R, B, n) max over the branch's members b of sim[b][c]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(rows, branches per row, branch length)."""
        return self.closest.shape[0], self.closest.shape[1], len(self.columns)

    def members(self) -> np.ndarray:
        """(R, B, L) GK indices of each branch, in the order they were added."""
        branches = self.shape[1]
        return np.stack([np.repeat(c, branches // c.shape[1], axis=1) for c in self.columns], axis=2)

    def membership(self) -> np.ndarray:
        """(R, B, n) True where GK c is in the branch."""
        rows, branches, _ = self.shape
        inside = np.zeros((rows, branches, self.closest.shape[2]), dtype=bool)
        np.put_along_axis(inside, self.members(), True, axis=2)
        return inside

    def gains(self, sim: np.ndarray) -> np.ndarray:
        """(R, B, n) sum of sim[b][c] over the branch's members b, left to right; +inf at the members."""
        rows, branches, _ = self.shape
        last = self.columns[-1]
        parents = self.parent_gains.shape[1]
        added = sim[self.group[:, None], last].reshape(rows, parents, branches // parents, -1)
        gains = (self.parent_gains[:, :, None, :] + added).reshape(rows, branches, -1)
        np.put_along_axis(gains, last[..., None], np.inf, axis=2)
        return gains

    def take(self, index: np.ndarray) -> Beams:
        """Keep, per row, the branches ``index`` (R, B') in that order."""
        rows = np.arange(len(self.group))[:, None]
        branches = self.shape[1]
        columns = [c[rows, index // (branches // c.shape[1])] for c in self.columns]
        parent_gains = self.parent_gains[rows, index // (branches // self.parent_gains.shape[1])]
        return Beams(self.group, columns, parent_gains, self.smoothness[rows, index], self.closest[rows, index])


def _initial_beams(sim: np.ndarray, smooth: np.ndarray) -> Beams:
    groups, n, _ = sim.shape
    group, start = np.repeat(np.arange(groups), n), np.tile(np.arange(n), groups)
    empty_gains = np.zeros((groups * n, 1, n))
    first = sim[group, start][:, None, :]
    return Beams(group, [start[:, None]], empty_gains, smooth[group, start][:, None], first.copy())


def _lowest(values: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` lowest values along the last axis, ties to the lower index (the first
    ``count`` entries of a stable ascending sort), by repeated first-occurrence argmin. Overwrites
    the values it picks."""
    picks = []
    for _ in range(count):
        pick = np.argmin(values, axis=-1)[..., None]
        np.put_along_axis(values, pick, np.inf, axis=-1)
        picks.append(pick)
    return np.concatenate(picks, axis=-1)


def _expand(beams: Beams, sim: np.ndarray, smooth: np.ndarray, beam_width: int) -> Beams:
    """Each branch gets as children the ``beam_width`` GKs outside it of lowest gain (ties: lower index)."""
    rows, branches, length = beams.shape
    width = min(beam_width, sim.shape[1] - length)
    gains = beams.gains(sim)
    pick = _lowest(gains.copy(), width)  # (R, B, w)
    group = beams.group[:, None, None]
    return Beams(
        beams.group,
        [*beams.columns, pick.reshape(rows, branches * width)],
        gains,
        (beams.smoothness[:, :, None] + smooth[group, pick]).reshape(rows, branches * width),
        np.maximum(beams.closest[:, :, None, :], sim[group, pick]).reshape(rows, branches * width, -1),
    )


class CostModel:
    """Branch costs for one layer's search, holding beta from its first evaluation on."""

    def __init__(self, sim: np.ndarray, settings: SearchSettings):
        self.sim, self.match, self.beta = sim, settings.match, settings.beta
        self.flat = sim.reshape(-1)

    def inner(self, beams: Beams) -> np.ndarray:
        """Sum of sim over the branch's pairs, left to right in itertools.combinations order."""
        rows, branches, length = beams.shape
        n = self.sim.shape[1]
        total = np.zeros((rows, branches))
        offset = beams.group[:, None] * n
        for a in range(length):
            first = beams.columns[a]
            row_start = ((offset + first) * n)[:, :, None]  # (R, B_a, 1)
            for b in range(a + 1, length):
                second = beams.columns[b]
                fine = second.shape[1]
                pair = row_start + second.reshape(rows, first.shape[1], -1)  # (R, B_a, B_b / B_a)
                values = self.flat.take(pair).reshape(rows, fine, 1)
                total.reshape(rows, fine, branches // fine)[...] += values
        return total

    def outer(self, beams: Beams) -> np.ndarray:
        if self.match == 1:
            nearest = beams.closest
        else:
            to_branch = self.sim[beams.group[:, None, None], beams.members()]  # (R, B, L, n)
            largest = -np.sort(-to_branch, axis=2)[:, :, : self.match]
            nearest = running_sum(np.moveaxis(largest, 2, 3))
        return running_sum(np.where(beams.membership(), 0.0, nearest))

    def cost(self, beams: Beams, with_outer: bool) -> np.ndarray:
        inner = self.inner(beams)
        if not with_outer:
            return inner
        if self.beta is None:
            length = beams.shape[2]
            pruned = self.sim.shape[1] - length
            self.beta = math.comb(length, 2) / (pruned * self.match) if pruned else 0.0
        return inner - self.beta * self.outer(beams)


def _rerank(beams: Beams, cost: np.ndarray, alpha: float, beam_width: int) -> Beams:
    """Rank by cost (worst first) and by smoothness (least smooth first), mix the ranks, keep the best."""
    rows, branches = cost.shape
    row = np.arange(rows)[:, None]
    positions = np.broadcast_to(np.arange(branches), (rows, branches))
    by_cost = np.argsort(-cost, axis=1, kind="stable")
    cost_rank = np.empty_like(by_cost)
    cost_rank[row, by_cost] = positions
    by_smooth = by_cost[row, np.argsort(-beams.smoothness[row, by_cost], axis=1, kind="stable")]
    smooth_rank = np.empty_like(by_smooth)
    smooth_rank[row, by_smooth] = positions
    score = alpha * cost_rank + (1 - alpha) * smooth_rank
    by_score = by_smooth[row, np.argsort(-score[row, by_smooth], axis=1, kind="stable")]
    return beams.take(by_score[:, :beam_width])


def beam_search(sim: np.ndarray, smooth: np.ndarray, settings: SearchSettings) -> np.ndarray:
    """(G, n, n) similarities and (G, n) smoothness -> (G, keep) kept GK indices per group, ascending."""
    groups, n, _ = sim.shape
    if not 1 <= settings.keep <= n:
        raise ValueError(f"keep must be in [1, {n}], got {settings.keep}")
    costs = CostModel(sim, settings)
    beams = _initial_beams(sim, smooth)
    step = 0
    while beams.shape[2] < settings.keep:
        beams = _expand(beams, sim, smooth, settings.beam_width)
        step += 1
        if settings.check_every and step % settings.check_every == 0:
            beams = _rerank(beams, costs.cost(beams, settings.outer_in_beam), settings.alpha, settings.beam_width)
    if settings.final_select == "cost":
        values = costs.cost(beams, with_outer=True)
    else:
        values = beams.smoothness
    candidates = beams.members().reshape(groups, -1, settings.keep)
    best = np.argmin(values.reshape(groups, -1), axis=1)
    return np.sort(candidates[np.arange(groups), best], axis=1)
