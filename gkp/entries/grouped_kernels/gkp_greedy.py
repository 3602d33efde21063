"""Smoothness snaking + greedy selection: the "Smoothness Snaking + Greedy" ablation of SR-GKP (Zhong et
al., NeurIPS 2023, Tables 4 and 5), with TMI-GKP's greedy selector (Zhong et al., ICLR 2022).

Filters are grouped by smoothness snaking, as in SR-GKP. In each group, from every start GK the GK of
lowest summed similarity to those already chosen is added until K are chosen (a beam of width one,
never re-ranked: no smoothness); the candidate of lowest cost is kept, where each pruned GK counts the
sum of its m = max(1, int(match_ratio * K)) most similar kept GKs (TMI-GKP: the top 20%) and beta is
automatic (C(K, 2) / (pruned * m)) unless given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from gkp.entries.grouped_kernels.grouped_kernel_method import Bucket, grouped_kernel_method
from gkp.entries.grouped_kernels.search import SearchSettings
from gkp.entries.grouped_kernels.srgkp import snaking
from gkp.foundation.schema import at_least, in_unit_interval, option, positive


@dataclass(frozen=True)
class GreedyParams:
    groups: int = option(8, check=at_least(1), doc="filter groups per conv")
    match_ratio: float = option(0.2, check=in_unit_interval, doc="share of kept GKs each pruned GK is compared with")
    beta: float | None = option(None, check=positive, doc="weight of the pruned-kernel term; default: automatic")
    scope: Literal["3x3", "all"] = option("3x3", doc="bottleneck ResNets: the 3x3 convs, or all block convs")


def greedy_settings(keep: int, match_ratio: float, beta: float | None) -> SearchSettings:
    return SearchSettings(keep, beam_width=1, check_every=None, match=max(1, int(match_ratio * keep)), beta=beta)


def greedy_select(bucket: Bucket, params: GreedyParams) -> np.ndarray:
    return bucket.beam_search(greedy_settings(bucket.keep, params.match_ratio, params.beta))


ENTRY = grouped_kernel_method(
    "gkp_greedy",
    GreedyParams,
    snaking,
    greedy_select,
    "smoothness snaking + TMI-GKP's greedy selection (SR-GKP ablation)",
)
