"""The common machinery of the filter-pruning baselines: each method only scores channels.

A method's ``score(model, groups, params, context)`` returns, for every prunable conv of the
architecture's dependency table (``model.filter_pruning_groups()``), one float64 score per output
channel: higher means keep. ``filter_method`` turns it into a ``PruningMethod`` that allocates keep
counts (see ``baselines.allocation``) and keeps the top-scoring channels of each layer, ties going to
the lower index. ``layerwise`` methods take ``prune.rate``, a ``prune.rates`` map or ``prune.target_macs``;
``global`` methods rank all layers' channels together (``rate`` is then the fraction of all prunable
channels removed) and take ``rate`` or ``target_macs``. Surgery is shared: ``gkp.mechanisms.pruning.surgery``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

import numpy as np
from torch import nn

from baselines.allocation import (
    MacsModel,
    check_rate_map,
    global_counts_for_rate,
    global_counts_for_target,
    layer_rates,
    layerwise_counts_for_target,
    uniform_counts,
)
from gkp.foundation.contracts import NO_CONTEXT, FilterGroup, PruningContext, PruningMethod, Selection
from gkp.foundation.errors import PruningError
from gkp.mechanisms.pruning.dependencies import filter_groups
from gkp.mechanisms.pruning.plan import FilterPlan, keep_count, keep_top_k

Scores = dict[str, np.ndarray]
Scorer = Callable[[nn.Module, Mapping[str, FilterGroup], Any, PruningContext], Scores]
Allocation = Literal["layerwise", "global"]
BUDGETS = {"layerwise": frozenset({"rate", "rates", "target_macs"}), "global": frozenset({"rate", "target_macs"})}


def _counts(
    model: nn.Module,
    groups: Mapping[str, FilterGroup],
    scores: Scores,
    rate: float,
    context: PruningContext,
    allocation: Allocation,
) -> tuple[dict[str, int], dict[str, Any]]:
    """(kept channels per layer, notes on how the counts were reached)."""
    channels = {name: len(scores[name]) for name in groups}
    if context.target_macs is None:
        if allocation == "global":
            return global_counts_for_rate(scores, rate), {}
        return uniform_counts(channels, layer_rates(list(groups), rate, context.rates)), {}
    macs = MacsModel(model, groups, context.input_size)
    notes: dict[str, Any] = {}
    if allocation == "global":
        counts = global_counts_for_target(scores, macs, context.target_macs)
    else:
        counts, solved = layerwise_counts_for_target(macs, context.target_macs)
        notes["solved_rate"] = round(solved, 6)
    notes["target_macs"] = context.target_macs
    notes["macs_fraction"] = round(macs.macs(counts) / macs.dense, 6)
    return counts, notes


def _read_calibration(context: PruningContext) -> tuple[PruningContext, dict[str, Any]]:
    """The context with its calibration batches read once, and a note of how many images they hold."""
    batches = context.calibration_batches()
    note = {"calibration": {"batches": len(batches), "images": sum(len(y) for _, y in batches)}}
    return replace(context, calibration=lambda: batches), note


def _check_budget(
    groups: Mapping[str, FilterGroup], model: nn.Module, rate: float, context: PruningContext, allocation: Allocation
) -> None:
    if context.rates and allocation == "global":
        raise PruningError("prune.rates: this method ranks channels globally; set prune.rate or prune.target_macs")
    check_rate_map(list(groups), context.rates)
    if allocation == "layerwise" and context.target_macs is None:
        rates = layer_rates(list(groups), rate, context.rates)
        for name in groups:
            keep_count(model.get_submodule(name).out_channels, rates[name], name)


def filter_method(
    name: str,
    params: type,
    score: Scorer,
    summary: str,
    allocation: Allocation = "layerwise",
    calibrated: bool = False,
    check_params: Callable[[nn.Module, Any], None] | None = None,
) -> PruningMethod:
    """A ``PruningMethod`` keeping each prunable conv's top-scoring filters."""

    def select(model: nn.Module, rate: float, settings: Any, context: PruningContext = NO_CONTEXT) -> Selection:
        groups = filter_groups(model)
        _check_budget(groups, model, rate, context, allocation)
        context, notes = _read_calibration(context) if calibrated else (context, {})
        scores = {
            layer: np.asarray(values, dtype=np.float64)
            for layer, values in score(model, groups, settings, context).items()
        }
        counts, budget_notes = _counts(model, groups, scores, rate, context, allocation)
        layers = {
            layer: FilterPlan(keep_top_k(scores[layer], counts[layer]))
            for layer in groups
            if counts[layer] < len(scores[layer])
        }
        return Selection(layers, {**notes, **budget_notes})

    def check(model: nn.Module, rate: float, settings: Any, context: PruningContext = NO_CONTEXT) -> None:
        _check_budget(filter_groups(model), model, rate, context, allocation)
        if check_params is not None:
            check_params(model, settings)

    return PruningMethod(
        name, params, select, check, summary, "filters", budgets=BUDGETS[allocation], calibrated=calibrated
    )
