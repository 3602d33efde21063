"""LAMP: "Layer-adaptive Sparsity for the Magnitude-based Pruning" (Lee, Park, Mo, Ahn, Shin; ICLR 2021),
made structured (one score per output channel instead of per weight, as Torch-Pruning's
``LAMPImportance`` does).

Criterion: channel c of a prunable conv has magnitude m_c = ||w_c||_2^2, the squared L2 norm of its
filter (float64). With the layer's magnitudes sorted ascending, m_(1) <= ... <= m_(n), the channel at
position u scores

    score(u) = m_(u) / sum_{v >= u} m_(v),

its magnitude over the sum of its own and all larger magnitudes of the same layer. Scores lie in [0, 1];
the largest channel of a layer scores exactly 1, and multiplying a layer's weights by a constant leaves
its scores unchanged. All layers' channels are then ranked together (``allocation="global"``), so the
layers' rates follow from the scores. Among equal magnitudes the higher channel index counts as the
smaller one (gets the lower score), matching the framework's rule that ties keep the lower index. A
layer whose weights are all zero scores 0 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from baselines.filter_method import filter_method
from gkp.foundation.contracts import PruningContext


@dataclass(frozen=True)
class LAMPParams:
    """LAMP has no parameters beyond the budget."""


def lamp_normalise(magnitudes: np.ndarray) -> np.ndarray:
    """m_(u) / sum_{v >= u} m_(v) for every entry, in the input's order."""
    magnitudes = np.asarray(magnitudes, dtype=np.float64)
    order = np.lexsort((-np.arange(len(magnitudes)), magnitudes))  # ascending; ties: higher index first
    ascending = magnitudes[order]
    tails = np.cumsum(ascending[::-1])[::-1]
    scores = np.zeros_like(magnitudes)
    scores[order] = np.divide(ascending, tails, out=np.zeros_like(ascending), where=tails > 0)
    return scores


def lamp_scores(weight: torch.Tensor) -> np.ndarray:
    """LAMP scores of the output channels of a conv weight (out, in, k, k), from ||w_c||_2^2."""
    magnitudes = weight.detach().double().flatten(1).pow(2).sum(dim=1).cpu().numpy()
    return lamp_normalise(magnitudes)


def score(model: nn.Module, groups, params: LAMPParams, context: PruningContext) -> dict[str, np.ndarray]:
    return {name: lamp_scores(model.get_submodule(name).weight) for name in groups}


ENTRY = filter_method(
    "lamp",
    LAMPParams,
    score,
    "LAMP, layer-adaptive magnitude scores ranked globally (Lee et al., ICLR 2021)",
    allocation="global",
)
