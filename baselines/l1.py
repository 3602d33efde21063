"""L1-norm filter pruning: "Pruning Filters for Efficient ConvNets" (Li et al., ICLR 2017).

Criterion: filter j of a conv scores s_j = sum |W_j| over its C_in x k x k weights (float64, trained
weights); each prunable conv keeps its highest-scoring filters, ties going to the lower index. Layers are
scored independently, one-shot, on the unpruned weights. Which convs are prunable comes from the
architecture's dependency table: for CIFAR ResNets the first conv of every basic block (its BatchNorm and
the second conv's inputs shrink with it).

Presets ``l1_a`` and ``l1_b`` are the paper's ResNet-56/110 variants A and B: per-stage rates, with the
layers the paper found sensitive left whole. The values are those of the widely used re-implementation
(Liu et al., "Rethinking the Value of Network Pruning", ``res56prune.py`` / ``res110prune.py``), there
numbered by conv index (1 = stem; block b's first conv = 2 + 2b):

- ResNet-56 A: 10% in every stage; skipped layer1.7, layer2.0, layer3.0, layer3.8.
- ResNet-56 B: 60% / 30% / 10%; skipped also layer1.8 and layer2.7.
- ResNet-110 A: 50% in stage 1 only; skipped layer1.17.
- ResNet-110 B: 50% / 40% / 30%; skipped layer1.17, layer2.0, layer3.0.

A preset fixes every layer's rate, so ``prune.rate`` is not read; ``prune.rates`` entries override it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from torch import nn

from baselines.filter_method import filter_method
from gkp.foundation.contracts import NO_CONTEXT, PruningContext, PruningMethod, Selection, model_spec
from gkp.foundation.errors import PruningError


@dataclass(frozen=True)
class L1Params:
    """L1-norm pruning has no parameters beyond the budget."""


def l1_scores(weight) -> np.ndarray:
    return weight.detach().double().abs().sum(dim=tuple(range(1, weight.dim()))).cpu().numpy()


def score(model: nn.Module, groups, params: L1Params, context: PruningContext) -> dict[str, np.ndarray]:
    return {name: l1_scores(model.get_submodule(name).weight) for name in groups}


L1 = filter_method("l1", L1Params, score, "L1-norm filter pruning (Li et al., ICLR 2017)")

PRESETS: dict[tuple[str, str], tuple[tuple[float, float, float], tuple[str, ...]]] = {
    ("resnet56", "a"): ((0.1, 0.1, 0.1), ("layer1.7", "layer2.0", "layer3.0", "layer3.8")),
    ("resnet56", "b"): ((0.6, 0.3, 0.1), ("layer1.7", "layer1.8", "layer2.0", "layer2.7", "layer3.0", "layer3.8")),
    ("resnet110", "a"): ((0.5, 0.0, 0.0), ("layer1.17",)),
    ("resnet110", "b"): ((0.5, 0.4, 0.3), ("layer1.17", "layer2.0", "layer3.0")),
}


def preset_rates(model: nn.Module, variant: str) -> dict[str, float]:
    arch = model_spec(model).arch
    if (arch, variant) not in PRESETS:
        raise PruningError(
            f"prune.method: l1_{variant} is Li et al.'s preset for resnet56 and resnet110, not {arch}; "
            "use l1 with prune.rate or a prune.rates map"
        )
    stage_rates, skipped = PRESETS[arch, variant]
    return {**{f"layer{s + 1}": rate for s, rate in enumerate(stage_rates)}, **dict.fromkeys(skipped, 0.0)}


def _preset(variant: str) -> PruningMethod:
    def with_preset(model: nn.Module, context: PruningContext) -> PruningContext:
        return replace(context, rates={**preset_rates(model, variant), **context.rates})

    def select(model: nn.Module, rate: float, params: Any, context: PruningContext = NO_CONTEXT) -> Selection:
        context = with_preset(model, context)
        selection = L1.select(model, rate, params, context)
        return Selection(selection.layers, {**selection.notes, "rates": dict(context.rates)})

    def check(model: nn.Module, rate: float, params: Any, context: PruningContext = NO_CONTEXT) -> None:
        L1.check(model, rate, params, with_preset(model, context))

    summary = f"L1-norm filter pruning, Li et al.'s ResNet-56/110 variant {variant.upper()} (ICLR 2017)"
    return PruningMethod(
        f"l1_{variant}", L1Params, select, check, summary, "filters", budgets=frozenset({"rate", "rates"})
    )


L1_A = _preset("a")
L1_B = _preset("b")

ENTRIES = (L1, L1_A, L1_B)
