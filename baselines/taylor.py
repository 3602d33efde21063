"""Taylor: "Importance Estimation for Neural Network Pruning" (Molchanov, Mallya, Tyree, Frosio, Kautz;
CVPR 2019), first-order Taylor importance of a gate after BatchNorm, in its BN-parameter form.

Criterion: for each calibration batch, with L the batch's mean cross-entropy and the model in eval mode
(BatchNorm normalises with its running statistics and does not update them), channel m of a prunable
conv's BatchNorm gets I_m = (gamma_m * dL/dgamma_m + beta_m * dL/dbeta_m)^2, which equals
(dL/dg_m * g_m)^2 for a unit gate g_m multiplying the BatchNorm's output (the paper's "gate after BN",
its best criterion). Filter m scores the mean of I_m over the batches; each prunable conv keeps its
highest-scoring filters, ties going to the lower index. Layers are scored independently (the paper
ranks globally and prunes iteratively while training; here: one-shot, layer-wise allocation).

Computation: the gradients come from ``torch.autograd.grad`` on the BatchNorm parameters only, so no
``.grad`` is written and the model is left as it was; the product, sum and square are taken in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.filter_method import filter_method
from gkp.foundation.contracts import Batch, PruningContext


@dataclass(frozen=True)
class TaylorParams:
    """Taylor has no parameters beyond the budget and the calibration images (``prune.calibration``)."""


def batch_importance(model: nn.Module, bns: dict[str, nn.BatchNorm2d], batch: Batch) -> dict[str, torch.Tensor]:
    """One batch's (gamma * dL/dgamma + beta * dL/dbeta)^2 per channel (float64) of each named BatchNorm."""
    images, labels = batch
    parameters = [p for bn in bns.values() for p in (bn.weight, bn.bias)]
    with torch.enable_grad():
        loss = F.cross_entropy(model(images), labels)
        gradients = iter(torch.autograd.grad(loss, parameters))
    importance = {}
    for name, bn in bns.items():
        d_gamma, d_beta = next(gradients).double(), next(gradients).double()
        gate = bn.weight.detach().double() * d_gamma + bn.bias.detach().double() * d_beta
        importance[name] = gate.square()
    return importance


def score(model: nn.Module, groups, params: TaylorParams, context: PruningContext) -> dict[str, np.ndarray]:
    batches = context.calibration_batches()
    bns = {name: model.get_submodule(group.bn) for name, group in groups.items()}
    totals: dict[str, torch.Tensor] = {}
    training = model.training
    try:
        model.eval()
        for batch in batches:
            for name, importance in batch_importance(model, bns, batch).items():
                totals[name] = totals[name] + importance if name in totals else importance
    finally:
        model.train(training)
    return {name: (totals[name] / len(batches)).cpu().numpy() for name in groups}


ENTRY = filter_method(
    "taylor",
    TaylorParams,
    score,
    "Taylor: first-order gate-after-BN importance (Molchanov et al., CVPR 2019)",
    calibrated=True,
)
