"""Network slimming: "Learning Efficient Convolutional Networks through Network Slimming" (Liu, Li,
Shen, Huang, Yan, Zhang; ICCV 2017).

Criterion: channel k of a filter group scores |gamma_k|, the absolute BatchNorm scale of the group's
BatchNorm (float64). All layers' channels are ranked together (``allocation="global"``): the paper's
single threshold on all |gamma|, at the quantile the rate asks for; unlike the paper's threshold, a
layer always keeps at least one channel. For option-A ResNets only the inner BatchNorm of each block
(bn1) is thresholded, since the architecture's dependency table lists only those channels.

The paper trains with an L1 penalty s * sum |gamma| on all BatchNorm scales, so that unimportant
channels' scales shrink towards zero before pruning; ``train.bn_sparsity`` (s; 1e-4 for VGG, 1e-5 for
ResNets in the paper) adds it to the training loop (``gkp.mechanisms.engine.hooks.BatchNormSparsity``, a
training hook; in ``finetune`` too). Without it this is the |gamma| criterion on a normally trained model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from torch import nn

from baselines.filter_method import filter_method
from gkp.foundation.contracts import FilterGroup, PruningContext
from gkp.foundation.errors import PruningError
from gkp.mechanisms.pruning.dependencies import filter_groups


@dataclass(frozen=True)
class SlimmingParams:
    """Network slimming has no pruning parameters beyond the budget (its sparsity is ``train.bn_sparsity``)."""


def check_affine(model: nn.Module, params: object) -> None:
    """Every filter group's BatchNorm must have a learnable scale gamma."""
    for group in filter_groups(model).values():
        if model.get_submodule(group.bn).weight is None:
            raise PruningError(f"'{group.bn}' has no learnable scale (affine=False); this method reads BatchNorm gamma")


def slimming_scores(bn: nn.Module) -> np.ndarray:
    """|gamma_k| of every channel of a BatchNorm."""
    return bn.weight.detach().double().abs().cpu().numpy()


def score(
    model: nn.Module, groups: Mapping[str, FilterGroup], params: SlimmingParams, context: PruningContext
) -> dict[str, np.ndarray]:
    return {name: slimming_scores(model.get_submodule(group.bn)) for name, group in groups.items()}


ENTRY = filter_method(
    "slimming",
    SlimmingParams,
    score,
    "network slimming, BatchNorm |gamma| ranked globally (Liu et al., ICCV 2017)",
    allocation="global",
    check_params=check_affine,
)
