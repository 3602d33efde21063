"""The two sums of SR-GKP's branch cost, compiled (numba), each added left to right exactly as the
authors' code adds it:

- inner: sim over the branch's pairs in ``itertools.combinations`` order (row a: sim[m_a][m_b] for
  b = a+1, ..., L-1; rows one after the other);
- outer: over the GKs p outside the branch, ascending, a value per p (its largest similarity to the
  branch, or the sum of its ``match`` largest).

No reordering of either sum is allowed: almost every branch has a twin of exactly equal cost up to the
last bits, and the order of the adds decides which one wins. So each branch's sum is one float64 add per
term in that order (no reassociation, no fastmath); what the compiled loops save is everything else.
The sums of different branches and rows are independent, so they run side by side, vectorised over a
tile of rows small enough to stay in the L1 cache. Branches share ancestors (member column l has B_l
entries, branch i's member being entry i // (B / B_l), see ``gkp.entries.grouped_kernels.search.Beams``), so a pair term
is read once per ancestor at its level and added to each descendant.

On the CPU the sums are numba-compiled loops: numba rather than a C extension of our own, since it
compiles these plain loops with exact float semantics and caches them on disk (a few seconds once per
machine). On any other device (a GPU) they are torch loops of whole-tensor adds, one add per term and
pair position across every branch and row at once: the same adds in the same order, so the same bits.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

TILE_SUMS = 1024  # partial sums (branches x rows) of one tile of the inner sum
TILE_VALUES = 4096  # values (GKs x rows) of one tile of the outer sum


def _packed(columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(levels, packed, offsets): column l, of shape (levels[l], R), is packed[offsets[l]:][: levels[l] * R]."""
    rows = columns[-1].shape[1]
    levels = np.array([c.shape[0] for c in columns], np.int64)
    offsets = np.concatenate([[0], np.cumsum(levels * rows)[:-1]])
    return levels, np.concatenate([c.ravel() for c in columns]).astype(np.int64, copy=False), offsets


@numba.njit(cache=True, nogil=True)
def _tile_pair_sums(flat_sim, n, group, levels, packed, offsets, first, count, out):
    """out[:, first:first + count]: per branch i and row r, 0.0 + each pair's term, pairs (a, b) in
    ``itertools.combinations`` order, one add per term in that order."""
    branches, rows = out.shape
    base = np.empty((branches, count), np.int64)  # offset of the row sim[g][m_a], per ancestor at a's level
    terms = np.empty((branches, count))  # sim[g][m_a][m_b], per ancestor at b's level
    total = np.zeros((branches, count))
    for a in range(levels.size - 1):
        for k in range(levels[a]):
            for t in range(count):
                r = first + t
                base[k, t] = (group[r] * n + packed[offsets[a] + k * rows + r]) * n
        for b in range(a + 1, levels.size):
            ratio = levels[b] // levels[a]
            for k in range(levels[b]):
                column = offsets[b] + k * rows + first
                for t in range(count):
                    terms[k, t] = flat_sim[base[k // ratio, t] + packed[column + t]]
            share = branches // levels[b]
            for i in range(branches):
                k = i // share
                for t in range(count):
                    total[i, t] += terms[k, t]
    out[:, first : first + count] = total


@numba.njit(cache=True, nogil=True)
def _pair_sums(flat_sim, n, group, levels, packed, offsets, out):
    branches, rows = out.shape
    tile = max(1, TILE_SUMS // branches)
    for first in range(0, rows, tile):
        _tile_pair_sums(flat_sim, n, group, levels, packed, offsets, first, min(tile, rows - first), out)


def _compiled_pair_sums(flat_sim: np.ndarray, n: int, group: np.ndarray, columns: list[np.ndarray]) -> np.ndarray:
    out = np.empty(columns[-1].shape)
    _pair_sums(flat_sim, n, group.astype(np.int64, copy=False), *_packed(columns), out)
    return out


def _level_runs(columns: list[torch.Tensor]) -> list[tuple[int, int, torch.Tensor]]:
    """(first column, level, stacked columns) of each run of consecutive columns with the same level."""
    runs, first = [], 0
    for index in range(1, len(columns) + 1):
        if index == len(columns) or columns[index].shape[0] != columns[first].shape[0]:
            runs.append((first, columns[first].shape[0], torch.stack(columns[first:index])))
            first = index
    return runs


def _device_pair_sums(flat_sim: torch.Tensor, n: int, group: torch.Tensor, columns: list[torch.Tensor]) -> torch.Tensor:
    """``pair_sums`` as torch adds: per member a, the terms of its pairs with the later members are
    gathered at once, one run of columns of the same level at a time, then added one pair after the other,
    each add updating every branch and row at once (a branch's own adds cannot run side by side without
    changing their order)."""
    branches, rows = columns[-1].shape
    total = torch.zeros(branches, rows, dtype=flat_sim.dtype, device=flat_sim.device)
    runs = _level_runs(columns)
    for a, column_a in enumerate(columns[:-1]):
        starts = (group * n + column_a) * n  # (B_a, R): offset of the row sim[g][m_a]
        for first, level, stacked in runs:
            later = stacked[max(a + 1 - first, 0) :]
            if not len(later):
                continue
            terms = flat_sim.take(starts.repeat_interleave(level // column_a.shape[0], dim=0) + later)
            by_ancestor = total.view(level, branches // level, rows)
            for term in terms[:, :, None]:
                by_ancestor += term
    return total


def pair_sums(flat_sim: torch.Tensor, n: int, group: torch.Tensor, columns: list[torch.Tensor]) -> torch.Tensor:
    """(B, R) sum of sim[g][m_a][m_b] over each branch's pairs a < b, left to right in
    ``itertools.combinations`` order, for the member columns ``columns`` (levels non-decreasing, each
    dividing the next) of rows of group ``group`` in the flattened (groups, n, n) similarities ``flat_sim``,
    on their device."""
    if flat_sim.device.type != "cpu":
        return _device_pair_sums(flat_sim, n, group, columns)
    sums = _compiled_pair_sums(flat_sim.numpy(), n, group.numpy(), [c.numpy() for c in columns])
    return torch.from_numpy(sums)


@numba.njit(cache=True, nogil=True)
def _tile_outside_sums(values, levels, packed, offsets, branch, first, count, out):
    """out[branch, first:first + count]: per row, 0.0 + values[branch, r, p] for p ascending, but 0.0 at
    the branch's members (adding +0.0 to a sum that starts at +0.0 is the same as skipping the term)."""
    branches, rows, n = values.shape
    masked = np.empty((n, count))  # transposed, so that the rows' sums are vectorised
    for t in range(count):
        for p in range(n):
            masked[p, t] = values[branch, first + t, p]
    for column in range(levels.size):
        k = branch // (branches // levels[column])
        for t in range(count):
            masked[packed[offsets[column] + k * rows + first + t], t] = 0.0
    total = np.zeros(count)
    for p in range(n):
        for t in range(count):
            total[t] += masked[p, t]
    out[branch, first : first + count] = total


@numba.njit(cache=True, nogil=True)
def _outside_sums(values, levels, packed, offsets, out):
    branches, rows, n = values.shape
    tile = max(1, TILE_VALUES // n)
    for branch in range(branches):
        for first in range(0, rows, tile):
            _tile_outside_sums(values, levels, packed, offsets, branch, first, min(tile, rows - first), out)


def _compiled_outside_sums(values: np.ndarray, columns: list[np.ndarray]) -> np.ndarray:
    out = np.empty(values.shape[:2])
    _outside_sums(np.ascontiguousarray(values), *_packed(columns), out)
    return out


def left_to_right(values: torch.Tensor) -> torch.Tensor:
    """The sum over the last axis, 0.0 plus one add per term from the first: the same bits on every device."""
    total = torch.zeros(values.shape[:-1], dtype=values.dtype, device=values.device)
    for index in range(values.shape[-1]):
        total += values[..., index]
    return total


def _device_outside_sums(values: torch.Tensor, columns: list[torch.Tensor]) -> torch.Tensor:
    """``outside_sums`` as torch adds: the members' values zeroed, then one add per GK p, ascending."""
    branches = values.shape[0]
    masked = values.clone()
    for column in columns:
        masked.scatter_(2, column.repeat_interleave(branches // column.shape[0], dim=0)[..., None], 0.0)
    return left_to_right(masked)


def outside_sums(values: torch.Tensor, columns: list[torch.Tensor]) -> torch.Tensor:
    """(B, R) sum of values[i, r, p] over the GKs p outside branch i of row r, p ascending, left to right,
    for (B, R, n) ``values`` and the branches' member columns ``columns`` (as for ``pair_sums``), on their
    device."""
    if values.device.type != "cpu":
        return _device_outside_sums(values, columns)
    return torch.from_numpy(_compiled_outside_sums(values.numpy(), [c.numpy() for c in columns]))
