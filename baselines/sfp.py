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
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from baselines.l2 import filter_norms
from baselines.training_time import SCOPE_DOC, Scope, pruned_counts, training_time_method
from gkp.foundation.contracts import Phase, PruningContext, Recipe, TrainingHooks
from gkp.foundation.schema import option
from gkp.mechanisms.pruning.masks import lowest, zero_filters


@dataclass(frozen=True)
class SFPParams:
    scope: Scope = option("all", doc=SCOPE_DOC)


class SFPHooks(TrainingHooks):
    """The masks are chosen afresh from the weights each time, so nothing needs keeping between epochs."""

    def __init__(self, counts: dict[str, int]):
        self.counts = counts

    def reselect(self, model: nn.Module) -> None:
        weights = {name: model.get_submodule(name).weight for name in self.counts}
        zero_filters(model, {name: lowest(filter_norms(weights[name]), n) for name, n in self.counts.items()})

    def start_phase(self, model: nn.Module, phase: int) -> None:
        self.reselect(model)

    def end_epoch(self, model: nn.Module, phase: int, epoch: int) -> None:
        self.reselect(model)


def build(model: nn.Module, rate: float, params: SFPParams, context: PruningContext, recipe: Recipe):
    return [Phase("", recipe)], SFPHooks(pruned_counts(model, params.scope, rate, context))


ENTRY = training_time_method(
    "sfp", SFPParams, build, "SFP, soft filter pruning by L2 norm after every epoch (He et al., IJCAI 2018)", "train"
)
