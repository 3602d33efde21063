"""FPGM: "Filter Pruning via Geometric Median for Deep Convolutional Neural Networks Acceleration"
(He, Liu, Wang, Hu, Yang; CVPR 2019), applied one-shot.

Criterion: with F_1..F_N the flattened raw filters (C_in x k x k weights, float64) of one conv, filter i
scores g_i = sum_j ||F_i - F_j||_2, its summed Euclidean distance to the layer's filters. The filters with
the smallest g lie closest to the layer's geometric median and are the most replaceable by the others, so
each prunable conv keeps its highest-scoring filters (ties to the lower index). Layers are scored
independently on the unpruned weights.

As in the authors' "FPGM-only" setting (``--rate_norm 1``) no norm-based pre-selection is made, and the
distances are between raw weights (Torch-Pruning's ``FPGMImportance`` instead compares |w|^p, a different
criterion). The paper re-applies the criterion as a soft mask after every training epoch; here it ranks
the trained filters once and the removed filters are cut out physically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.distance import cdist
from torch import nn

from baselines.filter_method import filter_method
from gkp.foundation.contracts import PruningContext


@dataclass(frozen=True)
class FPGMParams:
    """FPGM has no parameters beyond the budget."""


def fpgm_scores(weight: torch.Tensor) -> np.ndarray:
    """sum_j ||F_i - F_j||_2 for every output filter i of a conv weight (out, in, k, k)."""
    filters = weight.detach().double().flatten(1).cpu().numpy()
    return cdist(filters, filters, "euclidean").sum(axis=1)


def score(model: nn.Module, groups, params: FPGMParams, context: PruningContext) -> dict[str, np.ndarray]:
    return {name: fpgm_scores(model.get_submodule(name).weight) for name in groups}


ENTRY = filter_method("fpgm", FPGMParams, score, "FPGM, filter pruning via geometric median (He et al., CVPR 2019)")
