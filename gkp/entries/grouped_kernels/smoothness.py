"""Kernel smoothness and smoothness snaking (SR-GKP, Zhong et al., NeurIPS 2023, section 3.2.1).

A k x k kernel's smoothness is, over its positions (row-major), the sum over the 8 neighbours of
``|K[n]^2 - K[pos]^2|`` (neighbours outside the kernel add nothing); lower is smoother. A filter's
smoothness sums its C_in kernels, a grouped kernel's the d kernels of one input channel within a filter
group. Every total is ONE left-to-right float64 running sum over the kernels in order and their positions
row-major, exactly as the authors' code adds them: summing in another order changes the last bits, and
the beam search's near-ties then go another way. ``np.cumsum`` adds strictly left to right, so it is
used wherever such a running sum is needed.
"""

from __future__ import annotations

import numpy as np

NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def running_sum(values: np.ndarray) -> np.ndarray:
    """The left-to-right float64 sum over the last axis (0 for an empty axis)."""
    if values.shape[-1] == 0:
        return np.zeros(values.shape[:-1])
    return np.cumsum(values, axis=-1)[..., -1]


def position_sums(kernels: np.ndarray) -> np.ndarray:
    """(..., k, k) float64 kernels -> (..., k*k): each position's 8-neighbour sum, neighbours in order."""
    squared = kernels * kernels
    size = kernels.shape[-1]
    padded = np.zeros(kernels.shape[:-2] + (size + 2, size + 2))
    padded[..., 1:-1, 1:-1] = squared
    inside = np.zeros((size + 2, size + 2), dtype=bool)
    inside[1:-1, 1:-1] = True
    totals = np.zeros_like(squared)
    for di, dj in NEIGHBOURS:
        rows, cols = slice(1 + di, 1 + di + size), slice(1 + dj, 1 + dj + size)
        difference = np.abs(padded[..., rows, cols] - squared)
        totals = totals + np.where(inside[rows, cols], difference, 0.0)
    return totals.reshape(kernels.shape[:-2] + (size * size,))


def filter_smoothness(weight: np.ndarray) -> np.ndarray:
    """(C_out, C_in, k, k) -> (C_out,): each filter's smoothness, over input channels in order."""
    sums = position_sums(weight)
    return running_sum(sums.reshape(weight.shape[0], -1))


def grouped_kernel_smoothness(weight: np.ndarray, members: np.ndarray) -> np.ndarray:
    """(C_out, C_in, k, k) and (G, d) filter indices -> (G, C_in): smoothness of each grouped kernel,
    over the group's filters in their order."""
    sums = position_sums(weight)[members]  # (G, d, C_in, k*k)
    groups, d, c_in, area = sums.shape
    return running_sum(sums.transpose(0, 2, 1, 3).reshape(groups, c_in, d * area))


def snake_order(scores: np.ndarray, groups: int, descending: bool = False) -> np.ndarray:
    """Filter order of smoothness snaking: filters sorted by score (stable), group labels dealt
    0..n-1, n-1..0, 0..n-1, ... along that order, then filters ordered by (label, index)."""
    ascending = np.argsort(-scores if descending else scores, kind="stable")
    position = np.empty(len(scores), dtype=np.int64)
    position[ascending] = np.arange(len(scores))
    row, column = np.divmod(position, groups)
    label = np.where(row % 2 == 0, column, groups - 1 - column)
    return np.lexsort((np.arange(len(scores)), label))
