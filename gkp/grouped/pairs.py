"""The inner cost of SR-GKP's branches: the sum of sim over a branch's pairs, added left to right in
``itertools.combinations`` order (row a: sim[m_a][m_b] for b = a+1, ..., L-1; rows one after the
other), bit for bit as the authors' code adds it.

A left-to-right sum has one add per term and no reordering is exact, so the cost is L(L-1)/2 adds per
branch; what is saved is the rest. Branches share ancestors (member column l has B_l entries, see
``gkp.grouped.search.Beams``), so the term of pair (a, b) takes only B_b distinct values per row: each
row of pairs gathers them once per ancestor at that level, and one broadcast add per term updates
every branch (B, R) at once.
"""

from __future__ import annotations

import numpy as np

SHORT_RUN = 4  # runs of at most this many columns have all their rows' terms gathered at once
SHARED_FROM = 64  # branch length from which gathering once per ancestor pays for its extra steps


def _level_runs(columns: list[np.ndarray]) -> list[tuple[int, int, int, np.ndarray]]:
    """(level, first column, end column, stacked columns) of the runs of columns with the same level."""
    runs, begin = [], 0
    while begin < len(columns):
        level, end = columns[begin].shape[0], begin
        while end < len(columns) and columns[end].shape[0] == level:
            end += 1
        runs.append((level, begin, end, np.stack(columns[begin:end])))
        begin = end
    return runs


def pair_sums(flat_sim: np.ndarray, n: int, group: np.ndarray, columns: list[np.ndarray]) -> np.ndarray:
    """(B, R) sum of sim[g][m_a][m_b] over each branch's pairs a < b, left to right in
    ``itertools.combinations`` order, for the member columns ``columns`` (levels non-decreasing) of
    rows of group ``group`` in the flattened (groups, n, n) similarities ``flat_sim``."""
    branches, rows = columns[-1].shape
    total = np.zeros((branches, rows))
    if len(columns) < SHARED_FROM:  # short branches: one gather per row of pairs, for every branch
        columns = [np.repeat(c, branches // c.shape[0], axis=0) for c in columns]
    runs = _level_runs(columns)
    row_starts, short_terms = {}, {}
    for level, _, end, stacked in runs:
        below = [np.repeat(c, level // c.shape[0], axis=0) for c in columns[:end]]
        row_starts[level] = (group * n + np.stack(below)) * n  # (L', level, R): offset of sim[g][m_a]
        if len(stacked) <= SHORT_RUN:  # the tail columns: every row's terms in one gather
            short_terms[level] = flat_sim.take(row_starts[level][:, None] + stacked[None])
    for a in range(len(columns) - 1):
        for level, begin, end, stacked in runs:
            first = max(begin, a + 1)
            if first >= end:
                continue
            if level in short_terms:
                terms = short_terms[level][a, first - begin :]
            else:
                terms = flat_sim.take(row_starts[level][a] + stacked[first - begin :])
            by_ancestor = total.reshape(level, branches // level, rows)
            for term in terms:
                by_ancestor += term[:, None]
    return total
