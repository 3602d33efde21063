"""The shared driver of every grouped kernel pruning method: per pruned conv, group its filters, form the
grouped kernels (GKs), and let the method pick the GKs each group keeps.

A GKP method is a filter-grouping function (``order_filters``) and a selection function
(``select_bucket``). Layers with the same number of input channels, kernel size and kept count are
solved together in one ``Bucket``, so a vectorised selection runs once per shape, not once per layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from scipy.spatial.distance import cdist
from torch import nn
from tqdm import tqdm

from gkp.entries.grouped_kernels.search import SearchSettings, beam_search
from gkp.entries.grouped_kernels.smoothness import grouped_kernel_smoothness
from gkp.foundation.contracts import NO_CONTEXT, PruningContext, PruningMethod, Selection, no_snapshots
from gkp.foundation.errors import PruningError
from gkp.mechanisms.pruning.dependencies import grouped_kernel_targets
from gkp.mechanisms.pruning.plan import GroupedKernelPlan
from gkp.mechanisms.pruning.surgery import get_module

CPU = torch.device("cpu")

# (layer name, float64 weight, params, context) -> filter order; params are GroupedKernelParams.
FilterOrder = Callable[[str, np.ndarray, Any, PruningContext], np.ndarray]


def grouped_targets(model: nn.Module, scope: str) -> list[tuple[str, nn.Conv2d]]:
    targets = []
    for name in grouped_kernel_targets(model, scope):
        conv = get_module(model, name)
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            raise PruningError(f"'{name}' is not an ungrouped Conv2d, so grouped kernel pruning cannot prune it")
        targets.append((name, conv))
    return targets


def check_groups(out_channels: int, groups: int, layer: str) -> None:
    if out_channels % groups:
        valid = [g for g in range(1, out_channels + 1) if out_channels % g == 0]
        raise PruningError(
            f"groups={groups} does not divide the {out_channels} filters of '{layer}'; "
            f"valid group counts: {', '.join(map(str, valid))}"
        )


def keep_per_group(in_channels: int, rate: float, layer: str) -> int:
    """Grouped kernels each group keeps: int((1 - rate) * (C_in + 1)), as the authors' code computes it."""
    keep = int((1 - rate) * (in_channels + 1))
    if not 1 <= keep <= in_channels:
        raise PruningError(
            f"rate {rate} keeps {keep} of the {in_channels} input channels per group of '{layer}'; "
            f"it must keep between 1 and {in_channels}"
        )
    return keep


@dataclass
class LayerProblem:
    """One conv to prune: its float64 weight, its filter grouping and how many GKs each group keeps."""

    name: str
    weight: np.ndarray  # (C_out, C_in, k, k) float64
    filter_order: np.ndarray  # (C_out,)
    groups: int
    keep: int

    @property
    def members(self) -> np.ndarray:
        """(groups, d) filter indices of each group, in the group's order."""
        return self.filter_order.reshape(self.groups, -1)

    @cached_property
    def vectors(self) -> np.ndarray:
        """(groups, C_in, d*k*k): GK j of group g is the group's kernels at input channel j, flattened."""
        groups, c_in = self.groups, self.weight.shape[1]
        return self.weight[self.members].transpose(0, 2, 1, 3, 4).reshape(groups, c_in, -1)

    @cached_property
    def similarity(self) -> np.ndarray:
        """(groups, C_in, C_in): 1 - euclidean distance between the group's GKs (scipy's exact bits)."""
        return np.stack([1 - cdist(v, v, metric="euclidean") for v in self.vectors])

    @cached_property
    def smoothness(self) -> np.ndarray:
        return grouped_kernel_smoothness(self.weight, self.members)


@dataclass
class Bucket:
    """Same-shaped layers stacked: every (layer, group) pair is one row of the selection, searched on
    ``device`` (the pruned model's)."""

    layers: list[LayerProblem]
    device: torch.device = CPU

    @property
    def keep(self) -> int:
        return self.layers[0].keep

    @property
    def kernel_area(self) -> int:
        return self.layers[0].weight.shape[2] * self.layers[0].weight.shape[3]

    @cached_property
    def similarity(self) -> np.ndarray:
        return np.concatenate([layer.similarity for layer in self.layers])

    @cached_property
    def smoothness(self) -> np.ndarray:
        return np.concatenate([layer.smoothness for layer in self.layers])

    @cached_property
    def norms(self) -> np.ndarray:
        """(rows, C_in) L2 norm of each grouped kernel."""
        return np.concatenate([np.linalg.norm(layer.vectors, axis=2) for layer in self.layers])

    def row_names(self) -> list[tuple[str, int]]:
        """(layer name, group) of each row."""
        return [(layer.name, g) for layer in self.layers for g in range(layer.groups)]

    def beam_search(self, settings: SearchSettings) -> np.ndarray:
        """(rows, keep) kept GK indices per row, ascending: ``gkp.entries.grouped_kernels.search.beam_search`` on the
        bucket's similarities and smoothness, on its device."""
        return beam_search(self.similarity, self.smoothness, settings, self.device)


SelectBucket = Callable[[Bucket, Any], np.ndarray]  # -> (rows, keep) kept GK indices per row, ascending


def solve(
    problems: list[LayerProblem],
    select_bucket: SelectBucket,
    params: Any,
    name: str = "selection",
    device: torch.device = CPU,
) -> dict[str, GroupedKernelPlan]:
    buckets: dict[tuple[int, int, tuple[int, int]], list[LayerProblem]] = {}
    for problem in problems:
        key = (problem.weight.shape[1], problem.keep, problem.weight.shape[2:])
        buckets.setdefault(key, []).append(problem)
    plans = {}
    progress = tqdm(total=len(problems), desc=f"{name}: kernels", unit="layer", leave=False, disable=None)
    for layers in buckets.values():
        kept = select_bucket(Bucket(layers, device), params)
        progress.update(len(layers))
        row = 0
        for layer in layers:
            rows = kept[row : row + layer.groups]
            row += layer.groups
            plans[layer.name] = GroupedKernelPlan(
                tuple(int(f) for f in layer.filter_order), tuple(tuple(int(j) for j in group) for group in rows)
            )
    progress.close()
    return {problem.name: plans[problem.name] for problem in problems}


def grouped_kernel_method(
    name: str,
    params: type,
    order_filters: FilterOrder,
    select_bucket: SelectBucket,
    summary: str,
    snapshot_epochs: Callable[[Any], tuple[int, ...]] = no_snapshots,
) -> PruningMethod:
    """A ``PruningMethod`` from a filter-grouping and a selection function; ``params`` is a dataclass with
    the fields of ``gkp.foundation.contracts.GroupedKernelParams`` (``groups``, ``scope``)."""

    def select(model: nn.Module, rate: float, settings: Any, context: PruningContext = NO_CONTEXT) -> Selection:
        problems = []
        targets = grouped_targets(model, settings.scope)
        for layer, conv in tqdm(targets, desc=f"{name}: filter groups", unit="layer", leave=False, disable=None):
            check_groups(conv.out_channels, settings.groups, layer)
            weight = conv.weight.detach().double().cpu().numpy()
            order = np.asarray(order_filters(layer, weight, settings, context))
            keep = keep_per_group(conv.in_channels, rate, layer)
            problems.append(LayerProblem(layer, weight, order, settings.groups, keep))
        device = targets[0][1].weight.device if targets else CPU
        return Selection(solve(problems, select_bucket, settings, name, device))

    def check(model: nn.Module, rate: float, settings: Any, context: PruningContext = NO_CONTEXT) -> None:
        for layer, conv in grouped_targets(model, settings.scope):
            check_groups(conv.out_channels, settings.groups, layer)
            keep_per_group(conv.in_channels, rate, layer)

    return PruningMethod(name, params, select, check, summary, "grouped_kernels", snapshot_epochs)
