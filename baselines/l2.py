"""L2-norm filter pruning: the criterion of "Soft Filter Pruning for Accelerating Deep Convolutional
Neural Networks" (He, Kang, Dong, Fu, Yang; IJCAI 2018), applied one-shot.

Criterion: filter j of a conv scores s_j = ||W_j||_2, the L2 norm of its C_in x k x k weights (float64,
trained weights); each prunable conv keeps its highest-scoring filters, ties going to the lower index.
Layers are scored independently on the unpruned weights. SFP itself re-zeroes the smallest-norm filters
at the end of every training epoch and lets them regrow ("soft" masks); here the same norm ranks the
filters once, after training, and the removed filters are cut out physically (hard pruning).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from baselines.filter_method import filter_method
from gkp.foundation.contracts import PruningContext


@dataclass(frozen=True)
class L2Params:
    """L2-norm pruning has no parameters beyond the budget."""


def filter_norms(weight: torch.Tensor) -> torch.Tensor:
    """||W_j||_2 of every output filter j of a conv weight (out, in, k, k), float64, on its device."""
    return torch.linalg.vector_norm(weight.detach().double().flatten(1), dim=1)


def l2_scores(weight: torch.Tensor) -> np.ndarray:
    return filter_norms(weight).cpu().numpy()


def score(model: nn.Module, groups, params: L2Params, context: PruningContext) -> dict[str, np.ndarray]:
    return {name: l2_scores(model.get_submodule(name).weight) for name in groups}


ENTRY = filter_method("l2", L2Params, score, "L2-norm filter pruning, the SFP criterion (He et al., IJCAI 2018)")
