"""SFP: "Soft Filter Pruning for Accelerating Deep Convolutional Neural Networks" (He, Kang, Dong, Fu,
Yang; IJCAI 2018), as its official CIFAR code runs it.

Before the first epoch, and again after every ``every``-th epoch and after the last, each masked conv's
filters are ranked by the L2 norm of their weights and the floor(N x rate) lowest are set to zero
(weights only: BatchNorm stays, so a zeroed channel still emits relu(beta)). Nothing stops the zeroed
filters from training: they regrow during the next epoch and compete again, so the pruned set can change
until the end. Evaluations and best epochs see the model just after masking, as the official code
selects on post-mask accuracy.

The official CIFAR script masks the stem and both convs of every block (``scope: all``) and trains from
scratch (``prune.during: train``): 200 epochs, lr 0.1 with a one-epoch warm-up at 0.01. Its ``--rate``
is the kept fraction; ``prune.rate`` here is the removed one (0.3 for its 0.7). Ties go to the lower
index (numpy's argsort leaves them to the sort).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from baselines.training_time import MaskState, filter_norms, pruned_counts, training_time_method
from gkp.contracts import Phase, PruningContext, Recipe
from gkp.pruning.masks import lowest, zero_filters
from gkp.schema import at_least, option


@dataclass(frozen=True)
class SFPParams:
    scope: Literal["all", "inner"] = option(
        "all", doc="masked convs: all (stem and every block conv, the official code) or inner (removable ones)"
    )
    every: int = option(1, check=at_least(1), doc="re-select and zero the masks after every N-th epoch (and the last)")


class SFPHooks(MaskState):
    def __init__(self, counts: dict[str, int], every: int, epochs: int):
        super().__init__()
        self.counts, self.every, self.epochs = counts, every, epochs

    def reselect(self, model: nn.Module) -> None:
        self.masks = {name: lowest(filter_norms(model, name), count) for name, count in self.counts.items()}
        zero_filters(model, self.masks)

    def start_phase(self, model: nn.Module, phase: int) -> None:
        self.reselect(model)

    def end_epoch(self, model: nn.Module, phase: int, epoch: int) -> None:
        if epoch % self.every == 0 or epoch + 1 == self.epochs:
            self.reselect(model)


def build(model: nn.Module, rate: float, params: SFPParams, context: PruningContext, recipe: Recipe):
    hooks = SFPHooks(pruned_counts(model, params.scope, rate, context), params.every, recipe.epochs)
    return [Phase("", recipe)], hooks


METHOD = training_time_method(
    "sfp", SFPParams, build, "SFP, soft filter pruning by L2 norm after every epoch (He et al., IJCAI 2018)", "train"
)
