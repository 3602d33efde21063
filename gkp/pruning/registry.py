"""All pruning methods by name: the filter-pruning baselines (``baselines/``) and the GKP family
(``gkp/grouped/``)."""

from __future__ import annotations

from baselines import BASELINES
from gkp.grouped import greedy, largest, least_smooth, random_kernels, srgkp, tmi
from gkp.pruning.method import PruningMethod
from gkp.registry import Registry

GROUPED_KERNEL_METHODS = {
    method.name: method
    for method in (srgkp.METHOD, tmi.METHOD, greedy.METHOD, least_smooth.METHOD, largest.METHOD, random_kernels.METHOD)
}

PRUNING_METHODS: Registry[PruningMethod] = Registry("pruning method", {**BASELINES, **GROUPED_KERNEL_METHODS})
