"""FPGM as its paper and official CIFAR code run it: "Filter Pruning via Geometric Median for Deep
Convolutional Neural Networks Acceleration" (He, Liu, Wang, Hu, Yang; CVPR 2019). The one-shot variant
is ``fpgm``.

Before training, each masked conv zeroes, first, the floor(N x ``norm_rate``) filters of lowest L2 norm
(the code's ``rate_norm`` is the kept fraction: 1 - norm_rate), then, among the rest, the floor(N x rate)
filters whose summed Euclidean distance to the other remaining filters (raw flattened weights, float64)
is smallest: the filters nearest the layer's geometric median, which the others can replace. Every
step then zeroes the gradients of the zeroed filters, so they stay exactly zero (momentum and weight decay
included), and the masks are re-applied after every epoch.

The official code recomputes the masks after every epoch, but with the gradients masked the selection
never changes (the maintainer says so in the repository's issue #46), so here the masks are chosen once,
before the first epoch. Its CIFAR script fine-tunes a trained model (``prune.during: finetune``: 200
epochs at lr 0.01 decayed x0.2 at 60/120/160) and masks the stem and both convs of every block
(``scope: all``); FPGM-only is its ``--rate_norm 1`` (``norm_rate: 0``). At rate 0.4375 this is the
budget of the SR-GKP paper's FPGM rows (ResNet-56: 71.661M MACs in the authors' convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from baselines.fpgm import fpgm_scores
from baselines.l2 import filter_norms
from baselines.training_time import SCOPE_DOC, MaskState, Scope, pruned_counts, training_time_method
from gkp.foundation.contracts import Phase, PruningContext, Recipe
from gkp.foundation.errors import PruningError
from gkp.foundation.schema import in_unit_interval, option
from gkp.mechanisms.pruning.masks import lowest, mask_gradients, pruned_count, zero_filters


@dataclass(frozen=True)
class FPGMSoftParams:
    scope: Scope = option("all", doc=SCOPE_DOC)
    norm_rate: float = option(
        0.0, check=in_unit_interval, doc="fraction zeroed by smallest L2 norm before the distance criterion"
    )


def geometric_median_keep(weight: torch.Tensor, keep: torch.Tensor, count: int) -> torch.Tensor:
    """``keep`` with the ``count`` kept filters of smallest summed distance to the other kept ones dropped."""
    distance_sums = torch.from_numpy(fpgm_scores(weight[keep])).to(keep.device)
    survivors = keep.nonzero().flatten()
    result = keep.clone()
    result[survivors[~lowest(distance_sums, count)]] = False
    return result


class FPGMHooks(MaskState):
    def __init__(self, counts: dict[str, int], norm_counts: dict[str, int]):
        super().__init__()
        self.counts, self.norm_counts = counts, norm_counts

    def start_phase(self, model: nn.Module, phase: int) -> None:
        for name, count in self.counts.items():
            weight = model.get_submodule(name).weight
            by_norm = lowest(filter_norms(weight), self.norm_counts[name])
            self.masks[name] = geometric_median_keep(weight, by_norm, count)
        zero_filters(model, self.masks)

    def after_backward(self, model: nn.Module) -> None:
        mask_gradients(model, self.masks)

    def end_epoch(self, model: nn.Module, phase: int, epoch: int) -> None:
        zero_filters(model, self.masks)


def _norm_counts(model: nn.Module, counts: dict[str, int], norm_rate: float) -> dict[str, int]:
    result = {}
    for name, count in counts.items():
        total = model.get_submodule(name).out_channels
        result[name] = pruned_count(total, norm_rate, name)
        if result[name] + count >= total:
            raise PruningError(
                f"prune.params.norm_rate {norm_rate} and the rate together would zero every filter of '{name}'"
            )
    return result


def build(model: nn.Module, rate: float, params: FPGMSoftParams, context: PruningContext, recipe: Recipe):
    counts = pruned_counts(model, params.scope, rate, context)
    return [Phase("", recipe)], FPGMHooks(counts, _norm_counts(model, counts, params.norm_rate))


ENTRY = training_time_method(
    "fpgm_soft",
    FPGMSoftParams,
    build,
    "FPGM as published: geometric-median masks kept zero while training (He et al., CVPR 2019)",
    "finetune",
)
