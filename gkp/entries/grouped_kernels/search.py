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

Every start of every group (of every layer of the same shape) is searched at once, as float64 torch
tensors on the device the search is given (the pruned model's: a GPU when the run has one): the state is
a batch of beams of shape (branches, rows = groups * starts, ...). Sums stay left to right in the
reference's order (gains and branch smoothness grow one term at a time, which is the same order; the
inner and outer sums are ``gkp.entries.grouped_kernels.branch_sums``), sorts are stable, argmin takes the first minimum,
and nothing is de-duplicated, so the result is bit-for-bit the reference on every device.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from gkp.entries.grouped_kernels.branch_sums import left_to_right, outside_sums, pair_sums


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
    """The (groups, n, n) similarities and (groups, n) smoothness, with gathers by (group, GK)."""

    def __init__(self, sim: torch.Tensor, smooth: torch.Tensor):
        self.groups, self.n, _ = sim.shape
        self.flat = sim.reshape(-1)
        self.rows_table = sim.reshape(-1, self.n)
        self.smooth = smooth.reshape(-1)

    def rows(self, group: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """sim[group, index, :] for index (..., R) and group (R,): shape index.shape + (n,)."""
        flat_index = (group * self.n + index).reshape(-1)
        if self.rows_table.device.type == "cpu":  # numpy's gather allocates with huge pages: 3-5x faster here
            rows = torch.from_numpy(self.rows_table.numpy().take(flat_index.numpy(), axis=0))
        else:
            rows = self.rows_table.index_select(0, flat_index)
        return rows.view(*index.shape, self.n)

    def smoothness(self, group: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """smooth[group, index] for index (..., R) and group (R,)."""
        return self.smooth.take(group * self.n + index)


@dataclass
class Beams:
    """A batch of beams, one column per (group, start) row r: its branches and what extending them needs.

    Tensors are branch-major, (branches, rows, ...), so that operations broadcast over contiguous rows.
    Children follow their parent (child = parent * width + k), so what a branch inherits is stored once
    per ancestor and indexed with integer division: member column l has shape (B_l, R), branch i's l-th
    member being entry i // (B / B_l). The gains are stored for the parents only (+inf at the parents'
    members): a branch's own gains, parent gains + sim[last member], are formed when it is extended, so
    branches a re-ranking drops never cost one.
    """

    group: torch.Tensor  # (R,) group of each row
    columns: list[torch.Tensor]  # member columns, coarse to fine; the last one has B entries
    parent_gains: torch.Tensor  # (B_p, R, n) sum of sim[b][c] over the parent's members b, left to right
    smoothness: torch.Tensor  # (B, R) sum of the branch's GK smoothness, left to right
    closest: torch.Tensor  # (B, R, n) max over the branch's members b of sim[b][c]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(branches per row, rows, branch length)."""
        return self.closest.shape[0], self.closest.shape[1], len(self.columns)

    def members(self) -> torch.Tensor:
        """(L, B, R) GK indices of each branch, in the order they were added."""
        branches = self.shape[0]
        return torch.stack([c.repeat_interleave(branches // c.shape[0], dim=0) for c in self.columns])

    def gains(self, sim: Similarity) -> torch.Tensor:
        """(B, R, n) sum of sim[b][c] over the branch's members b, left to right; +inf at the members."""
        branches, rows, _ = self.shape
        last = self.columns[-1]
        parents = self.parent_gains.shape[0]
        gains = sim.rows(self.group, last).view(parents, branches // parents, rows, -1)
        gains += self.parent_gains[:, None]
        gains = gains.view(branches, rows, -1)
        return gains.scatter_(2, last[..., None], math.inf)

    def take(self, index: torch.Tensor) -> Beams:
        """Keep, per row, the branches ``index`` (B', R) in that order."""
        rows = torch.arange(len(self.group), device=index.device)
        branches = self.shape[0]

        def inherited(values: torch.Tensor) -> torch.Tensor:
            return values[index // (branches // values.shape[0]), rows]

        return Beams(
            self.group,
            [inherited(c) for c in self.columns],
            inherited(self.parent_gains),
            self.smoothness[index, rows],
            self.closest[index, rows],
        )


def _initial_beams(sim: Similarity) -> Beams:
    device = sim.flat.device
    group = torch.arange(sim.groups, device=device).repeat_interleave(sim.n)
    start = torch.arange(sim.n, device=device).repeat(sim.groups)
    rows = group.numel()
    return Beams(
        group,
        [start[None]],
        torch.zeros(1, rows, sim.n, dtype=sim.flat.dtype, device=device),
        sim.smoothness(group, start)[None],
        sim.rows(group, start[None]),
    )


def _lowest(values: torch.Tensor, count: int) -> torch.Tensor:
    """(..., count) indices of the ``count`` lowest values along the last axis, ties to the lower index:
    the first ``count`` entries of a stable ascending sort, by repeated first-occurrence argmin (each
    pick masked with +inf for the next, then restored)."""
    picks, saved = [], []
    for _ in range(count):
        pick = values.argmin(dim=-1, keepdim=True)
        picks.append(pick)
        saved.append(values.gather(-1, pick))
        values.scatter_(-1, pick, math.inf)
    for pick, value in zip(reversed(picks), reversed(saved), strict=True):
        values.scatter_(-1, pick, value)
    return torch.cat(picks, dim=-1)


def _expand(beams: Beams, sim: Similarity, beam_width: int) -> Beams:
    """Each branch gets as children the ``beam_width`` GKs outside it of lowest gain (ties: lower index)."""
    branches, rows, length = beams.shape
    width = min(beam_width, sim.n - length)
    gains = beams.gains(sim)
    pick = _lowest(gains, width).transpose(1, 2)  # (B, w, R): child = parent * width + k
    new_rows = sim.rows(beams.group, pick)  # (B, w, R, n)
    closest = torch.maximum(new_rows, beams.closest[:, None], out=new_rows)
    children = branches * width
    return Beams(
        beams.group,
        [*beams.columns, pick.reshape(children, rows)],
        gains,
        (beams.smoothness[:, None] + sim.smoothness(beams.group, pick)).reshape(children, rows),
        closest.view(children, rows, sim.n),
    )


TOP_SUM_ELEMENTS = 1 << 24  # bound on the similarities sorted at once for the top-m outer term


class CostModel:
    """Branch costs for one search, holding beta from its first evaluation on."""

    def __init__(self, sim: Similarity, settings: SearchSettings):
        self.sim, self.match, self.beta = sim, settings.match, settings.beta

    def inner(self, beams: Beams) -> torch.Tensor:
        """(B, R) sum of sim over the branch's pairs, left to right (``gkp.entries.grouped_kernels.branch_sums``)."""
        return pair_sums(self.sim.flat, self.sim.n, beams.group, beams.columns)

    def outer(self, beams: Beams) -> torch.Tensor:
        """(B, R) sum over the GKs outside the branch, ascending, of their nearness to it, left to right
        (``gkp.entries.grouped_kernels.branch_sums``)."""
        nearest = beams.closest if self.match == 1 else self.outside_top_sums(beams)
        return outside_sums(nearest, beams.columns)

    def outside_top_sums(self, beams: Beams) -> torch.Tensor:
        """(B, R, n): per GK, the sum of its ``match`` largest similarities to the branch's members,
        largest first (``outer`` uses the GKs outside the branch only). Computed a block of rows at a time."""
        members = beams.members().permute(1, 2, 0)  # (B, R, L)
        branches, rows, length = members.shape
        sums = torch.empty(branches, rows, self.sim.n, dtype=self.sim.flat.dtype, device=members.device)
        block = max(1, TOP_SUM_ELEMENTS // (branches * length * self.sim.n))
        for start in range(0, rows, block):
            part = members[:, start : start + block]
            to_branch = self.sim.rows(beams.group[start : start + block, None], part)  # (B, r, L, n)
            largest = torch.sort(to_branch, dim=2, descending=True).values[:, :, : self.match]
            sums[:, start : start + block] = left_to_right(largest.movedim(2, 3))
        return sums

    def cost(self, beams: Beams, with_outer: bool) -> torch.Tensor:
        inner = self.inner(beams)
        if not with_outer:
            return inner
        if self.beta is None:
            length = beams.shape[2]
            pruned = self.sim.n - length
            self.beta = math.comb(length, 2) / (pruned * self.match) if pruned else 0.0
        return inner - self.beta * self.outer(beams)


def _inverse(order: torch.Tensor) -> torch.Tensor:
    """Per row, the position of each entry in ``order`` (rows of permutations)."""
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _descending(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``order`` (rows of indices) stably re-sorted by ``values`` of its entries, largest first."""
    return order.gather(1, torch.argsort(-values.gather(1, order), dim=1, stable=True))


def _rerank(beams: Beams, cost: torch.Tensor, alpha: float, beam_width: int) -> Beams:
    """Rank by cost (worst first) and by smoothness (least smooth first), mix the ranks, keep the best."""
    cost, smoothness = cost.T, beams.smoothness.T  # (R, B): one row per beam
    by_cost = _descending(cost, torch.arange(cost.shape[1], device=cost.device).expand_as(cost))
    by_smooth = _descending(smoothness, by_cost)
    score = alpha * _inverse(by_cost).double() + (1 - alpha) * _inverse(by_smooth).double()
    by_score = _descending(score, by_smooth)
    return beams.take(by_score[:, :beam_width].T)


def _search(sim: Similarity, settings: SearchSettings) -> torch.Tensor:
    costs = CostModel(sim, settings)
    beams = _initial_beams(sim)
    step = 0
    while beams.shape[2] < settings.keep:
        beams = _expand(beams, sim, settings.beam_width)
        step += 1
        if settings.check_every and step % settings.check_every == 0:
            beams = _rerank(beams, costs.cost(beams, settings.outer_in_beam), settings.alpha, settings.beam_width)
    if settings.final_select == "cost":
        values = costs.cost(beams, with_outer=True)
    else:
        values = beams.smoothness
    candidates = beams.members().permute(2, 1, 0).reshape(sim.groups, -1, settings.keep)  # start-major
    best = torch.argmin(values.T.reshape(sim.groups, -1), dim=1)
    return torch.sort(candidates[torch.arange(sim.groups, device=best.device), best], dim=1).values


CPU_CHUNK_ROWS = 2048  # beams searched together on a CPU: enough to amortise Python, small enough for cache
DEVICE_CHUNK_ELEMENTS = 1 << 23  # elsewhere (a GPU): rows * n per chunk; 1 GiB per (16, rows, n) tensor, 4 at most


def _chunk_groups(groups: int, n: int, device: torch.device) -> int:
    """Filter groups searched together on ``device``."""
    rows = CPU_CHUNK_ROWS if device.type == "cpu" else DEVICE_CHUNK_ELEMENTS // n
    return min(groups, max(1, rows // n))


def beam_search(
    sim: np.ndarray, smooth: np.ndarray, settings: SearchSettings, device: torch.device | str = "cpu"
) -> np.ndarray:
    """(G, n, n) similarities and (G, n) smoothness -> (G, keep) kept GK indices per group, ascending,
    searched on ``device``.

    Groups are independent (beta depends only on lengths), so they are searched in chunks; on the CPU in
    parallel threads (torch and the compiled sums release the GIL), elsewhere one after the other."""
    groups, n, _ = sim.shape
    if not 1 <= settings.keep <= n:
        raise ValueError(f"keep must be in [1, {n}], got {settings.keep}")
    device = torch.device(device)
    sim_t = torch.as_tensor(sim, dtype=torch.float64).to(device)
    smooth_t = torch.as_tensor(smooth, dtype=torch.float64).to(device)
    per_chunk = _chunk_groups(groups, n, device)
    chunks = [Similarity(sim_t[g : g + per_chunk], smooth_t[g : g + per_chunk]) for g in range(0, groups, per_chunk)]
    workers = min(len(chunks), os.cpu_count() or 1) if device.type == "cpu" else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        searched = pool.map(lambda chunk: _search(chunk, settings), chunks)
        progress = tqdm(
            searched, total=len(chunks), desc=f"beam search, {n} kernels", unit="chunk", leave=False, disable=None
        )
        return torch.cat(list(progress)).cpu().numpy()
