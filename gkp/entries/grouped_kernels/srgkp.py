"""SR-GKP: "One Less Reason for Filter Pruning: Gaining Free Adversarial Robustness with Structured
Grouped Kernel Pruning" (Zhong et al., NeurIPS 2023), exactly as the authors' code computes it
(shared/specs/srgkp.md).

Per pruned conv: smoothness snaking deals the filters, sorted by kernel smoothness, into ``groups``
groups in a snake; then per group a beam search over grouped kernels (see ``gkp.entries.grouped_kernels.search``)
keeps int((1 - rate) * (C_in + 1)) of them, mixing a distance cost with smoothness when re-ranking.
One-shot, post-train, data-free: it reads only the trained weights.

1x1 convs (bottleneck ResNets with ``scope: all``) are our definition, since the authors' release calls
a selector it does not contain: filters are snaked by the plain sum of their weights, descending (the
authors' "magnitude snaking"), and each group's GKs are chosen greedily (beam width 1, no re-ranking:
1x1 kernels have no smoothness) with the same cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gkp.entries.grouped_kernels.grouped_kernel_method import Bucket, grouped_kernel_method
from gkp.entries.grouped_kernels.search import SearchSettings
from gkp.entries.grouped_kernels.smoothness import filter_smoothness, running_sum, snake_order
from gkp.foundation.contracts import PruningContext
from gkp.foundation.schema import at_least, in_unit_interval, option


@dataclass(frozen=True)
class SRGKPParams:
    groups: int = option(8, check=at_least(1), doc="filter groups per conv (the grouped conv's groups)")
    beam_width: int = option(2, check=at_least(1), doc="branches kept at each re-ranking, children per branch")
    check_every: int = option(3, check=at_least(1), doc="re-rank the beam every this many expansions")
    alpha: float = option(0.9, check=in_unit_interval, doc="weight of the cost rank against the smoothness rank")
    outer_in_beam: bool = option(True, doc="re-ranking cost includes the pruned-kernel term")
    final_select: Literal["cost", "smoothness"] = option("cost", doc="how the final branch is chosen")
    scope: Literal["3x3", "all"] = option("3x3", doc="bottleneck ResNets: the 3x3 convs, or all block convs")


def smoothness_snaking(weight: np.ndarray, groups: int) -> np.ndarray:
    """Filter order of smoothness snaking; magnitude snaking (sum of weights, descending) for 1x1 kernels."""
    if weight.shape[2] * weight.shape[3] == 1:
        return snake_order(running_sum(weight.reshape(weight.shape[0], -1)), groups, descending=True)
    return snake_order(filter_smoothness(weight), groups)


def snaking(layer: str, weight: np.ndarray, params: Any, context: PruningContext) -> np.ndarray:
    """The filter grouping of SR-GKP and of its ablations (a ``FilterOrder``)."""
    return smoothness_snaking(weight, params.groups)


def beam_select(bucket: Bucket, params: SRGKPParams) -> np.ndarray:
    if bucket.kernel_area == 1:
        settings = SearchSettings(bucket.keep, beam_width=1, check_every=None)
    else:
        settings = SearchSettings(
            bucket.keep, params.beam_width, params.check_every, params.alpha, params.outer_in_beam, params.final_select
        )
    return bucket.beam_search(settings)


ENTRY = grouped_kernel_method(
    "srgkp",
    SRGKPParams,
    snaking,
    beam_select,
    "SR-GKP: smoothness snaking + smooth beam search (Zhong et al., NeurIPS 2023)",
)
