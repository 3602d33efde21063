"""L1-norm filter pruning: "Pruning Filters for Efficient ConvNets" (Li et al., ICLR 2017).

Criterion: filter j of a conv scores s_j = sum |W_j| over its C_in x k x k weights (computed in float64
from the trained weights); each prunable conv keeps its floor((1 - rate) * C_out) highest-scoring filters,
ties going to the lower index. Layers are scored independently, one-shot, on the unpruned weights.
Which convs are prunable comes from the architecture's dependency table: for CIFAR ResNets the first
conv of every basic block (its BatchNorm and the second conv's inputs shrink with it).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from gkp.pruning.method import NO_CONTEXT, PruningContext, PruningMethod
from gkp.pruning.plan import FilterPlan, keep_count, keep_top_k
from gkp.pruning.surgery import filter_groups, get_module


@dataclass(frozen=True)
class L1Params:
    """L1-norm pruning has no parameters beyond the rate."""


def l1_scores(weight) -> list[float]:
    return weight.detach().double().abs().sum(dim=(1, 2, 3)).cpu().tolist()


def select(
    model: nn.Module, rate: float, params: L1Params, context: PruningContext = NO_CONTEXT
) -> dict[str, FilterPlan]:
    layers = {}
    for name in filter_groups(model):
        scores = l1_scores(get_module(model, name).weight)
        layers[name] = FilterPlan(keep_top_k(scores, keep_count(len(scores), rate, name)))
    return layers


def check(model: nn.Module, rate: float, params: L1Params) -> None:
    for name in filter_groups(model):
        keep_count(get_module(model, name).out_channels, rate, name)


METHOD = PruningMethod("l1", L1Params, select, check, "L1-norm filter pruning (Li et al., ICLR 2017)")
