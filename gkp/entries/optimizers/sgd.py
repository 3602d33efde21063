"""SGD with momentum (``momentum``), optional Nesterov momentum (``nesterov``) and weight decay added to the
gradient: torch's ``SGD``, the optimizer of the SR-GKP paper and of most CIFAR pruning code."""

from __future__ import annotations

from dataclasses import dataclass

from gkp.foundation.contracts import Optimizer
from gkp.mechanisms.engine.optimize import sgd


@dataclass(frozen=True)
class SGDParams:
    """SGD's settings are the section's own keys: lr, momentum, nesterov, weight_decay."""


ENTRY = Optimizer("sgd", SGDParams, sgd, "SGD with the section's momentum, Nesterov switch and weight decay")
