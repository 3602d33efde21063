"""Random filter pruning: the control every criterion should beat (cf. Mittal et al., "Recovering from
Random Pruning: On the Plasticity of Deep Convolutional Neural Networks", WACV 2018).

Criterion: the filters of each prunable conv score a random permutation of 0..N-1, drawn by a numpy
``Generator`` seeded with ``gkp.foundation.seeding.derive_seed(seed, "random_filters", layer name)``; each conv keeps
its highest-scoring filters, i.e. a uniformly random subset of the size its rate allows. The plan depends
only on ``prune.params.seed`` and the layer names: the same seed gives the same plan on any machine,
whatever the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from baselines.filter_method import filter_method
from gkp.foundation.contracts import PruningContext
from gkp.foundation.schema import at_least, option
from gkp.foundation.seeding import derive_seed


@dataclass(frozen=True)
class RandomParams:
    seed: int = option(0, check=at_least(0), doc="seed of the random choice (with each layer's name)")


def random_scores(channels: int, seed: int, layer: str) -> np.ndarray:
    """A random permutation of 0..channels-1, fixed by ``seed`` and ``layer``."""
    generator = np.random.default_rng(derive_seed(seed, "random_filters", layer))
    return generator.permutation(channels).astype(np.float64)


def score(model: nn.Module, groups, params: RandomParams, context: PruningContext) -> dict[str, np.ndarray]:
    return {name: random_scores(model.get_submodule(name).out_channels, params.seed, name) for name in groups}


ENTRY = filter_method("random", RandomParams, score, "random filter pruning, a seeded control")
