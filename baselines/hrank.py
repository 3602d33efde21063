"""HRank: "HRank: Filter Pruning using High-Rank Feature Map" (Lin, Ji, Wang, Zhang, Zhang, Tian, Shao;
CVPR 2020).

Criterion: filter j of a conv scores the mean, over all calibration images, of the matrix rank of its
h x w feature map, read after the conv's BatchNorm and the ReLU (``relu(bn(conv(x)))``, model in eval
mode, no gradients); each prunable conv keeps its highest-scoring filters. Layers are scored
independently, one-shot, on the unpruned model.

Rank: ``torch.linalg.matrix_rank`` of every map at once, with the singular values computed in float64
and the tolerance of the feature maps' own dtype: singular values at most
``sigma_max * max(h, w) * eps`` count as zero, ``eps`` being that of the maps (float32 for a float32
model). That is the tolerance HRank's ``torch.matrix_rank`` applied to its float32 maps; float64's eps
would count the float32 rounding noise of a low-rank map as rank (a rank-3 float32 map would score 8).

Ties: ranks are integers of at most min(h, w), so equal scores are common (deep layers saturate);
``keep_top_k`` keeps the lower channel index among equal scores, so the selection is deterministic
(HRank's own ``np.argsort`` leaves it to the sort's order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from baselines.activations import feature_maps
from baselines.filter_method import filter_method
from gkp.foundation.contracts import FilterGroup, PruningContext


@dataclass(frozen=True)
class HRankParams:
    """HRank has no parameters beyond the budget and the calibration images (``prune.calibration``)."""


def feature_map_ranks(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) feature maps -> (N, C) ranks (int64): float64 SVD, the maps' dtype's tolerance."""
    tolerance = max(maps.shape[-2:]) * torch.finfo(maps.dtype).eps
    return torch.linalg.matrix_rank(maps.double(), rtol=tolerance)


def mean_ranks(model: nn.Module, groups: Mapping[str, FilterGroup], batches) -> dict[str, torch.Tensor]:
    """Each group's conv: the mean feature-map rank of every filter over the calibration batches."""
    rank_sums: dict[str, torch.Tensor] = {}

    def accumulate(name: str, maps: torch.Tensor) -> None:
        ranks = feature_map_ranks(maps).sum(dim=0, dtype=torch.float64)
        rank_sums[name] = rank_sums[name] + ranks if name in rank_sums else ranks

    feature_maps(model, groups, batches, accumulate)
    images = sum(len(x) for x, _ in batches)
    return {name: rank_sums[name] / images for name in groups}


def score(model: nn.Module, groups, params: HRankParams, context: PruningContext) -> dict[str, np.ndarray]:
    ranks = mean_ranks(model, groups, context.calibration_batches())
    return {name: values.cpu().numpy() for name, values in ranks.items()}


ENTRY = filter_method(
    "hrank", HRankParams, score, "HRank: mean feature-map rank (Lin et al., CVPR 2020)", calibrated=True
)
