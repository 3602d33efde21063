"""All pruning methods by name: the filter-pruning baselines (``baselines/``) and the GKP family."""

from __future__ import annotations

from baselines import BASELINES
from gkp.pruning.method import PruningMethod
from gkp.registry import Registry

PRUNING_METHODS: Registry[PruningMethod] = Registry("pruning method", dict(BASELINES))
