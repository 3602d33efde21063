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

with beta = C(|B|, 2) / (pruned * match) fixed at its first evaluation within the search.

Every start of every group (of every layer of the same shape) is searched at once: the state is a
batch of beams of shape (branches, rows = groups * starts, ...). Sums stay left to right in the
reference's order (``running_sum``; gains and branch smoothness grow one term at a time, which is the
same order; the inner and outer sums are ``gkp.grouped.branch_sums``), sorts are stable, and nothing is
de-duplicated, so the result is bit-for-bit the reference.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
from tqdm import tqdm

from gkp.grouped.branch_sums import outside_sums, pair_sums
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


class Similarity:
    """The (groups, n, n) similarity matrices, with gathers by (group, GK)."""

    def __init__(self, sim: np.ndarray):
        self.groups, self.n, _ = sim.shape
        self.flat = sim.reshape(-1)
        self.rows_table = sim.reshape(-1, self.n)

    def rows(self, group: np.ndarray, index: np.ndarray) -> np.ndarray:
        """sim[group, index, :] for index (..., R) and group (R,): shape index.shape + (n,)."""
        return self.rows_table.take((group * self.n + index).ravel(), axis=0).reshape(index.shape + (self.n,))


@dataclass
class Beams:
    """A batch of beams, one column per (group, start) row r: its branches and what extending them needs.

    Arrays are branch-major, (branches, rows, ...), so that operations broadcast over contiguous rows.
    Children follow their parent (child = parent * width + k), so what a branch inherits is stored once
    per ancestor and indexed with integer division: member column l has shape (B_l, R), branch i's l-th
    member being entry i // (B / B_l). The gains are stored for the parents only (+inf at the parents'
    members): a branch's own gains, parent gains + sim[last member], are formed when it is extended, so
    branches a re-ranking drops never cost one.
    """

    group: np.ndarray  # (R,) group of each row
    columns: list[np.ndarray]  # member columns, coarse to fine; the last one has B entries
    parent_gains: np.ndarray  # (B_p, R, n) sum of sim[b][c] over the parent's members b, left to right
    smoothness: np.ndarray  # (B, R) sum of the branch's GK smoothness, left to right
    closest: np.ndarray  # (B, R, n) max over the branch's members b of sim[b][c]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(branches per row, rows, branch length)."""
        return self.closest.shape[0], self.closest.shape[1], len(self.columns)

    def members(self) -> np.ndarray:
        """(L, B, R) GK indices of each branch, in the order they were added."""
        branches = self.shape[0]
        return np.stack([np.repeat(c, branches // c.shape[0], axis=0) for c in self.columns])

    def gains(self, sim: Similarity) -> np.ndarray:
        """(B, R, n) sum of sim[b][c] over the branch's members b, left to right; +inf at the members."""
        branches, rows, _ = self.shape
        last = self.columns[-1]
        parents = self.parent_gains.shape[0]
        gains = sim.rows(self.group, last).reshape(parents, branches // parents, rows, -1)
        gains += self.parent_gains[:, None]
        gains = gains.reshape(branches, rows, -1)
        np.put_along_axis(gains, last[..., None], np.inf, axis=2)
        return gains

    def take(self, index: np.ndarray) -> Beams:
        """Keep, per row, the branches ``index`` (B', R) in that order."""
        rows = np.arange(len(self.group))
        branches = self.shape[0]

        def inherited(values: np.ndarray) -> np.ndarray:
            return values[index // (branches // values.shape[0]), rows]

        return Beams(
            self.group,
            [inherited(c) for c in self.columns],
            inherited(self.parent_gains),
            self.smoothness[index, rows],
            self.closest[index, rows],
        )


def _initial_beams(sim: Similarity, smooth: np.ndarray) -> Beams:
    group, start = np.repeat(np.arange(sim.groups), sim.n), np.tile(np.arange(sim.n), sim.groups)
    rows = group.size
    return Beams(
        group, [start[None]], np.zeros((1, rows, sim.n)), smooth[group, start][None], sim.rows(group, start[None])
    )


def _lowest(values: np.ndarray, count: int) -> np.ndarray:
    """(..., count) indices of the ``count`` lowest values along the last axis, ties to the lower index:
    the first ``count`` entries of a stable ascending sort, by repeated first-occurrence argmin (each
    pick masked with +inf for the next, then restored)."""
    picks, saved = [], []
    for _ in range(count):
        pick = np.argmin(values, axis=-1)[..., None]
        picks.append(pick)
        saved.append(np.take_along_axis(values, pick, axis=-1))
        np.put_along_axis(values, pick, np.inf, axis=-1)
    for pick, value in zip(reversed(picks), reversed(saved), strict=True):
        np.put_along_axis(values, pick, value, axis=-1)
    return np.concatenate(picks, axis=-1)


def _expand(beams: Beams, sim: Similarity, smooth: np.ndarray, beam_width: int) -> Beams:
    """Each branch gets as children the ``beam_width`` GKs outside it of lowest gain (ties: lower index)."""
    branches, rows, length = beams.shape
    width = min(beam_width, sim.n - length)
    gains = beams.gains(sim)
    pick = _lowest(gains, width).transpose(0, 2, 1)  # (B, w, R): child = parent * width + k
    new_rows = sim.rows(beams.group, pick)  # (B, w, R, n)
    closest = np.maximum(new_rows, beams.closest[:, None], out=new_rows)
    children = branches * width
    return Beams(
        beams.group,
        [*beams.columns, pick.reshape(children, rows)],
        gains,
        (beams.smoothness[:, None] + smooth[beams.group, pick]).reshape(children, rows),
        closest.reshape(children, rows, sim.n),
    )


TOP_SUM_ELEMENTS = 1 << 24  # bound on the similarities sorted at once for the top-m outer term


class CostModel:
    """Branch costs for one search, holding beta from its first evaluation on."""

    def __init__(self, sim: Similarity, settings: SearchSettings):
        self.sim, self.match, self.beta = sim, settings.match, settings.beta

    def inner(self, beams: Beams) -> np.ndarray:
        """(B, R) sum of sim over the branch's pairs, left to right (``gkp.grouped.branch_sums``)."""
        return pair_sums(self.sim.flat, self.sim.n, beams.group, beams.columns)

    def outer(self, beams: Beams) -> np.ndarray:
        """(B, R) sum over the GKs outside the branch, ascending, of their nearness to it, left to right
        (``gkp.grouped.branch_sums``)."""
        nearest = beams.closest if self.match == 1 else self.outside_top_sums(beams)
        return outside_sums(nearest, beams.columns)

    def outside_top_sums(self, beams: Beams) -> np.ndarray:
        """(B, R, n): per GK, the sum of its ``match`` largest similarities to the branch's members,
        largest first (``outer`` uses the GKs outside the branch only). Computed a block of rows at a time."""
        members = np.moveaxis(beams.members(), 0, 2)  # (B, R, L)
        branches, rows, length = members.shape
        sums = np.empty((branches, rows, self.sim.n))
        block = max(1, TOP_SUM_ELEMENTS // (branches * length * self.sim.n))
        for start in range(0, rows, block):
            part = members[:, start : start + block]
            to_branch = self.sim.rows(beams.group[start : start + block, None], part)  # (B, r, L, n)
            largest = -np.sort(-to_branch, axis=2)[:, :, : self.match]
            sums[:, start : start + block] = running_sum(np.moveaxis(largest, 2, 3))
        return sums

    def cost(self, beams: Beams, with_outer: bool) -> np.ndarray:
        inner = self.inner(beams)
        if not with_outer:
            return inner
        if self.beta is None:
            length = beams.shape[2]
            pruned = self.sim.n - length
            self.beta = math.comb(length, 2) / (pruned * self.match) if pruned else 0.0
        return inner - self.beta * self.outer(beams)


def _rerank(beams: Beams, cost: np.ndarray, alpha: float, beam_width: int) -> Beams:
    """Rank by cost (worst first) and by smoothness (least smooth first), mix the ranks, keep the best."""
    cost, smoothness = cost.T, beams.smoothness.T  # (R, B): one row per beam
    rows, branches = cost.shape
    row = np.arange(rows)[:, None]
    positions = np.broadcast_to(np.arange(branches), (rows, branches))
    by_cost = np.argsort(-cost, axis=1, kind="stable")
    cost_rank = np.empty_like(by_cost)
    cost_rank[row, by_cost] = positions
    by_smooth = by_cost[row, np.argsort(-smoothness[row, by_cost], axis=1, kind="stable")]
    smooth_rank = np.empty_like(by_smooth)
    smooth_rank[row, by_smooth] = positions
    score = alpha * cost_rank + (1 - alpha) * smooth_rank
    by_score = by_smooth[row, np.argsort(-score[row, by_smooth], axis=1, kind="stable")]
    return beams.take(by_score[:, :beam_width].T)


ROWS_PER_CHUNK = 2048  # beams searched together: large enough to amortise Python, small enough for cache


def _search(sim: Similarity, smooth: np.ndarray, settings: SearchSettings) -> np.ndarray:
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
    candidates = beams.members().transpose(2, 1, 0).reshape(sim.groups, -1, settings.keep)  # start-major
    best = np.argmin(values.T.reshape(sim.groups, -1), axis=1)
    return np.sort(candidates[np.arange(sim.groups), best], axis=1)


def beam_search(sim: np.ndarray, smooth: np.ndarray, settings: SearchSettings) -> np.ndarray:
    """(G, n, n) similarities and (G, n) smoothness -> (G, keep) kept GK indices per group, ascending.

    Groups are independent (beta depends only on lengths), so they are searched in chunks, in parallel
    threads (numpy releases the GIL in its array operations)."""
    groups, n, _ = sim.shape
    if not 1 <= settings.keep <= n:
        raise ValueError(f"keep must be in [1, {n}], got {settings.keep}")
    per_chunk = max(1, ROWS_PER_CHUNK // n)
    chunks = [(Similarity(sim[g : g + per_chunk]), smooth[g : g + per_chunk]) for g in range(0, groups, per_chunk)]
    with ThreadPoolExecutor(max_workers=min(len(chunks), os.cpu_count() or 1)) as pool:
        searched = pool.map(lambda chunk: _search(*chunk, settings), chunks)
        progress = tqdm(
            searched, total=len(chunks), desc=f"beam search, {n} kernels", unit="chunk", leave=False, disable=None
        )
        return np.concatenate(list(progress))
