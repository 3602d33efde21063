"""Smoothness snaking + keeping the largest grouped kernels (L2 norm): a magnitude control for GKP.

Each group keeps its K grouped kernels of largest L2 norm (ties: lower index), the grouped-kernel
counterpart of L2-norm filter pruning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from gkp.entries.grouped_kernels.grouped_kernel_method import Bucket, grouped_kernel_method
from gkp.entries.grouped_kernels.srgkp import snaking
from gkp.foundation.schema import at_least, option


@dataclass(frozen=True)
class LargestParams:
    groups: int = option(8, check=at_least(1), doc="filter groups per conv")
    scope: Literal["3x3", "all"] = option("3x3", doc="bottleneck ResNets: the 3x3 convs, or all block convs")


def keep_largest(bucket: Bucket, params: LargestParams) -> np.ndarray:
    return np.sort(np.argsort(-bucket.norms, axis=1, kind="stable")[:, : bucket.keep], axis=1)


ENTRY = grouped_kernel_method(
    "gkp_l2", LargestParams, snaking, keep_largest, "smoothness snaking + keep the largest GKs by L2 norm"
)
