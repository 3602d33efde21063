"""Smoothness snaking + keeping the smoothest grouped kernels: the "Snaking + Least Smooth" ablation of
SR-GKP (Zhong et al., NeurIPS 2023, Table 5), which prunes the least smooth GKs and fails badly.

Each group keeps its K grouped kernels of lowest smoothness (ties: lower index).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from gkp.entries.grouped_kernels.grouped_kernel_method import Bucket, grouped_kernel_method
from gkp.entries.grouped_kernels.srgkp import snaking
from gkp.foundation.schema import at_least, option


@dataclass(frozen=True)
class LeastSmoothParams:
    groups: int = option(8, check=at_least(1), doc="filter groups per conv")
    scope: Literal["3x3", "all"] = option("3x3", doc="bottleneck ResNets: the 3x3 convs, or all block convs")


def keep_smoothest(bucket: Bucket, params: LeastSmoothParams) -> np.ndarray:
    return np.sort(np.argsort(bucket.smoothness, axis=1, kind="stable")[:, : bucket.keep], axis=1)


ENTRY = grouped_kernel_method(
    "gkp_least_smooth",
    LeastSmoothParams,
    snaking,
    keep_smoothest,
    "smoothness snaking + prune the least smooth GKs (SR-GKP's failing ablation)",
)
