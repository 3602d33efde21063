"""SFP: "Soft Filter Pruning for Accelerating Deep Convolutional Neural Networks" (He, Kang, Dong, Fu,
Yang; IJCAI 2018), as its official CIFAR code runs it.

Before the first epoch and after every epoch, each masked conv's filters are ranked by the L2 norm of
their weights and the floor(N x rate) lowest are set to zero (weights only: BatchNorm stays, so a zeroed
channel still emits a constant). Nothing stops the zeroed filters from training: they regrow during the
next epoch and compete again, so the pruned set can change until the end. Evaluations and best epochs
see the model just after masking, as the official code selects on post-mask accuracy. (Its
``--epoch_prune`` can mask less often, leaving epochs whose regrown filters would be evaluated and kept
as best models; its CIFAR script masks after every epoch, as here.)

The official CIFAR script masks the stem and both convs of every block (``scope: all``) and trains from
scratch (``prune.during: train``): 200 epochs, lr 0.1 with a one-epoch warm-up at 0.01. Its ``--rate``
is the kept fraction; ``prune.rate`` here is the removed one (0.3 for its 0.7). Ties go to the lower
index (numpy's argsort leaves them to the sort).

``csb`` below 1 mixes SR-GKP's kernel smoothness into the criterion, as Table 6 of Zhong et al. (NeurIPS
2023) does to show that the mix-up does not carry over to filter pruning: each filter gets SR-GKP's
Eq. (2) score, csb x its norm rank + (1 - csb) x its smoothness rank, and the lowest scores are zeroed.
The ranks follow SR-GKP's re-ranking of beam branches, a filter standing for a branch and its L2 norm for
the branch's cost: the weakest norm ranks 0, and, re-sorting that order stably, the least smooth filter
(the largest filter smoothness, ``gkp.entries.grouped_kernels.smoothness``) ranks 0. At csb = 1 the
score is the norm rank alone and the choice is SFP's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from baselines.l2 import filter_norms
from baselines.training_time import SCOPE_DOC, Scope, pruned_counts, training_time_method
from gkp.entries.grouped_kernels.smoothness import filter_smoothness
from gkp.foundation.contracts import Phase, PruningContext, Recipe, TrainingHooks
from gkp.foundation.schema import in_unit_interval, option
from gkp.mechanisms.pruning.masks import lowest, zero_filters


@dataclass(frozen=True)
class SFPParams:
    scope: Scope = option("all", doc=SCOPE_DOC)
    csb: float = option(
        1.0,
        check=in_unit_interval,
        doc="weight of the L2-norm rank against SR-GKP's smoothness rank (1: SFP as published; "
        "Table 6 of the SR-GKP paper mixes 0.5, 0.75 and 0.9)",
    )


def mixed_scores(norms: np.ndarray, smoothness: np.ndarray, csb: float) -> np.ndarray:
    """SR-GKP's Eq. (2) score of each filter (higher is kept): csb x its norm rank (the weakest 0) +
    (1 - csb) x its smoothness rank (the least smooth 0, ranked stably from the norm order)."""
    by_norm = np.argsort(norms, kind="stable")
    by_smoothness = by_norm[np.argsort(-smoothness[by_norm], kind="stable")]
    return csb * _positions(by_norm) + (1 - csb) * _positions(by_smoothness)


def _positions(order: np.ndarray) -> np.ndarray:
    positions = np.empty(len(order))
    positions[order] = np.arange(len(order))
    return positions


class SFPHooks(TrainingHooks):
    """The masks are chosen afresh from the weights each time, so nothing needs keeping between epochs."""

    def __init__(self, counts: dict[str, int], csb: float):
        self.counts, self.csb = counts, csb

    def reselect(self, model: nn.Module) -> None:
        weights = {name: model.get_submodule(name).weight for name in self.counts}
        zero_filters(model, {name: lowest(self.scores(weights[name]), n) for name, n in self.counts.items()})

    def scores(self, weight: torch.Tensor) -> torch.Tensor:
        """Each filter's mix-up score, the lowest zeroed (at csb = 1 the order of the L2 norms)."""
        weights = weight.detach().double().cpu()
        norms = filter_norms(weights).numpy()
        return torch.from_numpy(mixed_scores(norms, filter_smoothness(weights.numpy()), self.csb))

    def start_phase(self, model: nn.Module, phase: int) -> None:
        self.reselect(model)

    def end_epoch(self, model: nn.Module, phase: int, epoch: int) -> None:
        self.reselect(model)


def build(model: nn.Module, rate: float, params: SFPParams, context: PruningContext, recipe: Recipe):
    return [Phase("", recipe)], SFPHooks(pruned_counts(model, params.scope, rate, context), params.csb)


ENTRY = training_time_method(
    "sfp", SFPParams, build, "SFP, soft filter pruning by L2 norm after every epoch (He et al., IJCAI 2018)", "train"
)
