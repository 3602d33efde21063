"""TMI-GKP: "Revisit Kernel Pruning with Lottery Regulated Grouped Convolutions" (Zhong et al., ICLR
2022), the grouped kernel pruning SR-GKP builds on (shared/specs/paper.md, section 6.2).

Per pruned conv:

1. Cluster the filters three ways into equal groups (``gkp.entries.grouped_kernels.clustering``: kernel PCA, spectral
   embedding, same-size DBSCAN).
2. For every training snapshot k (epochs 35..70 by default, saved by the training stage), score each
   filter by its "tickets magnitude increase" against the trained weights, TMI_f = sum over the
   filter's weights of ||W_t| - |W_k||. Each clustering is judged by its clusters' TMI sums: sorted,
   the gaps between consecutive sums have a mean and a variance; the clustering of lowest
   0.5 * rank(mean) + rank(variance) wins the snapshot (ties: the order above).
3. The clustering that wins most snapshots groups the layer (ties: the longest run of consecutive wins,
   then the order above); groups are ordered by their lowest filter index, filters ascending within.
4. Each group keeps K = int((1 - rate) * (C_in + 1)) grouped kernels chosen greedily (see
   ``gkp.entries.grouped_kernels.gkp_greedy``): from every start, add the GK least similar in sum to those
   chosen; keep the candidate of lowest cost, each pruned GK counting the sum of its top int(0.2 K) similarities to the
   kept ones, weighted by ``cost_balancer`` (beta; automatic by default).

Where the original's code is not available to us the details are our definitions, documented in
``gkp.entries.grouped_kernels.clustering``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import groupby
from typing import Literal

import numpy as np

from gkp.entries.grouped_kernels import clustering
from gkp.entries.grouped_kernels.gkp_greedy import greedy_settings
from gkp.entries.grouped_kernels.grouped_kernel_method import Bucket, grouped_kernel_method
from gkp.foundation.contracts import PruningContext
from gkp.foundation.errors import ConfigError
from gkp.foundation.schema import at_least, in_unit_interval, option, positive

log = logging.getLogger(__name__)

ORDER = tuple(clustering.CLUSTERINGS)  # tie-break order of the clusterings


@dataclass(frozen=True)
class TMIParams:
    groups: int = option(8, check=at_least(1), doc="filter groups per conv")
    first_snapshot: int = option(35, check=at_least(1), doc="first training epoch whose snapshot is read")
    last_snapshot: int = option(70, check=at_least(1), doc="last training epoch whose snapshot is read")
    cost_balancer: float | None = option(None, check=positive, doc="beta of the greedy cost; default: automatic")
    match_ratio: float = option(0.2, check=in_unit_interval, doc="share of kept GKs each pruned GK is compared with")
    neighbours: int = option(16, check=at_least(1), doc="k of the spectral clustering's mutual kNN graph")
    eps_step: float = option(0.05, check=positive, doc="radius step of the same-size DBSCAN")
    seed: int = option(0, doc="seed of the clusterings")
    scope: Literal["3x3", "all"] = option("3x3", doc="bottleneck ResNets: the 3x3 convs, or all block convs")

    def resolved(self) -> TMIParams:
        if self.first_snapshot > self.last_snapshot:
            raise ConfigError(
                f"prune.params.first_snapshot: {self.first_snapshot} is after last_snapshot {self.last_snapshot}"
            )
        return self


def snapshot_epochs(params: TMIParams) -> tuple[int, ...]:
    return tuple(range(params.first_snapshot, params.last_snapshot + 1))


def tmi_scores(trained: np.ndarray, snapshot: np.ndarray) -> np.ndarray:
    """Per filter, the sum over its weights of ||W_t| - |W_k||."""
    return np.abs(np.abs(trained) - np.abs(snapshot)).reshape(len(trained), -1).sum(axis=1)


def snapshot_winner(labels: dict[str, np.ndarray], scores: np.ndarray, groups: int) -> str:
    """The clustering whose cluster TMI sums are most evenly spaced: lowest 0.5 rank(mean gap) + rank(variance)."""
    gaps = {
        name: np.diff(np.sort(np.bincount(found, weights=scores, minlength=groups))) for name, found in labels.items()
    }
    names = list(labels)
    rank_mean = np.argsort(np.argsort([gaps[n].mean() if gaps[n].size else 0.0 for n in names], kind="stable"))
    rank_var = np.argsort(np.argsort([gaps[n].var() if gaps[n].size else 0.0 for n in names], kind="stable"))
    return names[int(np.argmin(0.5 * rank_mean + rank_var))]


def majority(winners: list[str]) -> str:
    """Most wins; ties go to the longest run of consecutive wins, then to ``ORDER``."""
    longest_run = {name: max((len(list(run)) for w, run in groupby(winners) if w == name), default=0) for name in ORDER}
    return max(ORDER, key=lambda name: (winners.count(name), longest_run[name], -ORDER.index(name)))


def group_order(labels: np.ndarray) -> np.ndarray:
    """Filters ordered by group (groups by their lowest filter), ascending within a group."""
    first_member = {label: np.flatnonzero(labels == label).min() for label in np.unique(labels)}
    rank = {label: position for position, label in enumerate(sorted(first_member, key=first_member.get))}
    return np.lexsort((np.arange(len(labels)), np.array([rank[label] for label in labels])))


def tmi_grouping(layer: str, weight: np.ndarray, params: TMIParams, context: PruningContext) -> np.ndarray:
    filters = weight.reshape(len(weight), -1)
    labels = {
        "kernel_pca": clustering.kernel_pca(filters, params.groups, params.seed),
        "spectral": clustering.spectral(filters, params.groups, params.seed, params.neighbours),
        "same_size_dbscan": clustering.same_size_dbscan(filters, params.groups, params.seed, params.eps_step),
    }
    winners = []
    for epoch in snapshot_epochs(params):
        snapshot = context.snapshot(epoch)[f"{layer}.weight"].double().cpu().numpy()
        winners.append(snapshot_winner(labels, tmi_scores(weight, snapshot), params.groups))
    chosen = majority(winners)
    log.info("tmigkp %s: %s clustering (%d of %d snapshots)", layer, chosen, winners.count(chosen), len(winners))
    return group_order(labels[chosen])


def tmi_select(bucket: Bucket, params: TMIParams) -> np.ndarray:
    settings = greedy_settings(bucket.keep, params.match_ratio, params.cost_balancer)
    return bucket.beam_search(settings)


ENTRY = grouped_kernel_method(
    "tmigkp",
    TMIParams,
    tmi_grouping,
    tmi_select,
    "TMI-GKP: TMI-driven filter clustering + greedy grouped kernel selection (Zhong et al., ICLR 2022)",
    snapshot_epochs,
)
