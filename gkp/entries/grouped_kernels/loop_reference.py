"""A readable, loop-based reference of SR-GKP's selection, written line by line from the procedure in
shared/specs/srgkp.md (and of TMI-GKP's greedy selector): the oracle of the tests and of
benchmarks/bench_srgkp.py.

It is slow on purpose (plain Python lists and loops, every sum left to right as the procedure states)
so that it can be read against the spec; the vectorised implementation in ``gkp.entries.grouped_kernels.search`` must
agree with it bit for bit.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.spatial.distance import cdist

NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def position_sums(kernel: list[list[float]], p: int = 2) -> list[float]:
    """Each position's 8-neighbour sum of |K[n]^p - K[pos]^p|, positions row-major."""
    size = len(kernel)
    sums = []
    for i in range(size):
        for j in range(size):
            total = 0.0
            for di, dj in NEIGHBOURS:
                ni, nj = i + di, j + dj
                if 0 <= ni < size and 0 <= nj < size:
                    total += abs(kernel[ni][nj] ** p - kernel[i][j] ** p)
            sums.append(total)
    return sums


def smoothness_of(kernels: list[list[list[float]]]) -> float:
    """One running sum over the kernels in order and their positions row-major."""
    total = 0.0
    for kernel in kernels:
        for value in position_sums(kernel):
            total += value
    return total


def snake_order(filter_scores: list[float], groups: int) -> list[int]:
    """Filters sorted ascending (stable) by score, dealt labels in a snake, ordered by (label, index)."""
    ascending = sorted(range(len(filter_scores)), key=lambda f: filter_scores[f])
    label = [0] * len(filter_scores)
    for position, f in enumerate(ascending):
        row, column = divmod(position, groups)
        label[f] = column if row % 2 == 0 else groups - 1 - column
    return sorted(range(len(filter_scores)), key=lambda f: (label[f], f))


class GroupSearch:
    """The beam search of one filter group, with beta frozen at its first evaluation."""

    def __init__(self, sim, smooth, keep, beam_width, check_every, alpha, outer_in_beam, final_select):
        self.sim, self.smooth, self.keep = sim, smooth, keep
        self.beam_width, self.check_every, self.alpha = beam_width, check_every, alpha
        self.outer_in_beam, self.final_select = outer_in_beam, final_select
        self.n = len(smooth)
        self.beta = None

    def cost(self, branch, with_outer: bool) -> float:
        inner = 0.0
        for a, b in itertools.combinations(range(len(branch)), 2):
            inner += self.sim[branch[a]][branch[b]]
        if not with_outer:
            return inner
        pruned = [p for p in range(self.n) if p not in branch]
        if self.beta is None:
            self.beta = math.comb(len(branch), 2) / len(pruned) if pruned else 0.0
        outer = 0.0
        for p in pruned:
            outer += max(self.sim[b][p] for b in branch)
        return inner - self.beta * outer

    def branch_smoothness(self, branch) -> float:
        total = 0.0
        for j in branch:
            total += self.smooth[j]
        return total

    def expand(self, beam):
        children = []
        for branch in beam:
            gains = []
            for c in range(self.n):
                if c not in branch:
                    gain = 0.0
                    for b in branch:
                        gain += self.sim[b][c]
                    gains.append((gain, c))
            gains.sort(key=lambda item: item[0])
            children += [branch + (c,) for _, c in gains[: self.beam_width]]
        return children

    def rerank(self, beam):
        scored = [(branch, self.cost(branch, self.outer_in_beam), self.branch_smoothness(branch)) for branch in beam]
        by_cost = sorted(scored, key=lambda item: item[1], reverse=True)
        cost_rank = {id(item): rank for rank, item in enumerate(by_cost)}
        by_smooth = sorted(by_cost, key=lambda item: item[2], reverse=True)
        smooth_rank = {id(item): rank for rank, item in enumerate(by_smooth)}
        score = {
            id(item): self.alpha * cost_rank[id(item)] + (1 - self.alpha) * smooth_rank[id(item)] for item in by_smooth
        }
        by_score = sorted(by_smooth, key=lambda item: score[id(item)], reverse=True)
        return [item[0] for item in by_score[: self.beam_width]]

    def run(self) -> list[int]:
        candidates = []
        for start in range(self.n):
            beam, step = [(start,)], 0
            while len(beam[0]) < self.keep:
                beam = self.expand(beam)
                step += 1
                if step % self.check_every == 0:
                    beam = self.rerank(beam)
            candidates += beam
        if self.final_select == "cost":
            values = [self.cost(branch, True) for branch in candidates]
        else:
            values = [self.branch_smoothness(branch) for branch in candidates]
        best = min(range(len(candidates)), key=lambda i: values[i])
        return sorted(candidates[best])


def srgkp_layer(
    weight: np.ndarray,
    rate=0.4375,
    groups=8,
    beam_width=2,
    check_every=3,
    alpha=0.9,
    outer_in_beam=True,
    final_select="cost",
) -> dict:
    """SR-GKP's selection for one conv weight (C_out, C_in, k, k): {"filter_order", "kept"}."""
    w = weight.astype(np.float64).tolist()
    c_out, c_in = len(w), len(w[0])
    order = snake_order([smoothness_of(w[f]) for f in range(c_out)], groups)
    per_group = c_out // groups
    keep = int((1 - rate) * (c_in + 1))
    kept = []
    for g in range(groups):
        members = order[g * per_group : (g + 1) * per_group]
        vectors = np.array([[v for f in members for row in w[f][j] for v in row] for j in range(c_in)])
        sim = (1 - cdist(vectors, vectors, metric="euclidean")).tolist()
        smooth = [smoothness_of([w[f][j] for f in members]) for j in range(c_in)]
        search = GroupSearch(sim, smooth, keep, beam_width, check_every, alpha, outer_in_beam, final_select)
        kept.append(search.run())
    return {"filter_order": order, "kept": kept}


def greedy_group(sim: list[list[float]], keep: int, match: int) -> list[int]:
    """TMI-GKP's greedy selection with the top-``match`` outer cost and automatic beta."""
    n = len(sim)
    candidates = []
    for start in range(n):
        branch = [start]
        while len(branch) < keep:
            gains = []
            for c in range(n):
                if c not in branch:
                    gain = 0.0
                    for b in branch:
                        gain += sim[b][c]
                    gains.append((gain, c))
            branch.append(min(gains, key=lambda item: item[0])[1])
        candidates.append(branch)
    pruned_count = n - keep
    beta = math.comb(keep, 2) / (pruned_count * match) if pruned_count else 0.0
    costs = []
    for branch in candidates:
        inner = 0.0
        for a, b in itertools.combinations(range(keep), 2):
            inner += sim[branch[a]][branch[b]]
        outer = 0.0
        for p in range(n):
            if p not in branch:
                top = sorted((sim[b][p] for b in branch), reverse=True)[:match]
                total = 0.0
                for value in top:
                    total += value
                outer += total
        costs.append(inner - beta * outer)
    best = min(range(n), key=lambda i: costs[i])
    return sorted(candidates[best])
