"""DepGraph's group-norm criterion: "DepGraph: Towards Any Structural Pruning" (Fang, Ma, Song, Mi,
Wang; CVPR 2023), without its sparse learning (the "group_norm" rather than "group_sl" setting).

Criterion: channel k of a filter group is coupled across these members, and only these:

- the conv's output filter k, W_conv[k] (C_in x k x k weights; the conv's bias, if any, is not used);
- the group's BatchNorm scale gamma_k (its shift beta_k is not used);
- input channel k of each consumer, W_next[:, k] (all its filters' kernels on channel k for a conv, the
  weight column k for a linear layer).

Each member contributes the squared L2 norm of its channel-k slice, and the group importance is their
mean, I(k) = (||W_conv[k]||^2 + gamma_k^2 + sum_consumers ||W_next[:, k]||^2) / (2 + number of consumers),
in float64. Each layer's importances are then divided by their mean over the layer's channels
(Torch-Pruning's ``normalizer="mean"``; a layer whose importances are all zero keeps zeros), and all
layers' channels are ranked together (``allocation="global"``). This is
``GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")`` restricted to the groups
of the architecture's dependency table (for option-A ResNets the inner channels of each block).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from baselines.filter_method import filter_method
from baselines.slimming import check_affine
from gkp.foundation.contracts import FilterGroup, PruningContext


@dataclass(frozen=True)
class GroupNormParams:
    """The group-norm criterion has no parameters beyond the budget."""


def channel_sq_norms(weight: torch.Tensor, dim: int) -> np.ndarray:
    """Squared L2 norm of each slice of ``weight`` along ``dim`` (0: output channels, 1: input channels)."""
    return weight.detach().double().transpose(0, dim).flatten(1).pow(2).sum(dim=1).cpu().numpy()


def group_importance(model: nn.Module, group: FilterGroup) -> np.ndarray:
    """The mean over the group's members of each channel's squared L2 norm."""
    members = [
        channel_sq_norms(model.get_submodule(group.conv).weight, 0),
        model.get_submodule(group.bn).weight.detach().double().pow(2).cpu().numpy(),
        *(channel_sq_norms(model.get_submodule(consumer).weight, 1) for consumer in group.consumers),
    ]
    return np.mean(members, axis=0)


def mean_normalise(importance: np.ndarray) -> np.ndarray:
    mean = importance.mean()
    return importance / mean if mean > 0 else importance


def score(
    model: nn.Module, groups: Mapping[str, FilterGroup], params: GroupNormParams, context: PruningContext
) -> dict[str, np.ndarray]:
    return {name: mean_normalise(group_importance(model, group)) for name, group in groups.items()}


ENTRY = filter_method(
    "group_norm",
    GroupNormParams,
    score,
    "DepGraph group-norm criterion, ranked globally (Fang et al., CVPR 2023)",
    allocation="global",
    check_params=check_affine,
)
