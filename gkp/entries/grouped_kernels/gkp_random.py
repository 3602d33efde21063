"""Smoothness snaking + random grouped kernels: the control every GKP table needs.

Each group keeps K grouped kernels drawn uniformly without replacement, from a generator seeded by
``seed``, the layer name and the group, so a plan does not depend on which other layers are pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from gkp.entries.grouped_kernels.grouped_kernel_method import Bucket, grouped_kernel_method
from gkp.entries.grouped_kernels.srgkp import snaking
from gkp.foundation.schema import at_least, option
from gkp.foundation.seeding import derive_seed


@dataclass(frozen=True)
class RandomKernelParams:
    groups: int = option(8, check=at_least(1), doc="filter groups per conv")
    seed: int = option(0, doc="seed of the random choice")
    scope: Literal["3x3", "all"] = option("3x3", doc="bottleneck ResNets: the 3x3 convs, or all block convs")


def keep_random(bucket: Bucket, params: RandomKernelParams) -> np.ndarray:
    n = bucket.smoothness.shape[1]
    draws = [
        np.random.default_rng(derive_seed(params.seed, "gkp_random", name, group)).permutation(n)
        for name, group in bucket.row_names()
    ]
    return np.sort(np.stack(draws)[:, : bucket.keep], axis=1)


ENTRY = grouped_kernel_method(
    "gkp_random",
    RandomKernelParams,
    snaking,
    keep_random,
    "smoothness snaking + seeded random GKs (control)",
)
