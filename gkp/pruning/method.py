"""The contract every one-shot pruning method fulfils, so the runner needs no per-method code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

LayerSelect = Callable[[nn.Module, float, Any], dict[str, Any]]
FeasibilityCheck = Callable[[nn.Module, float, Any], None]


@dataclass(frozen=True)
class PruningMethod:
    """A pruning method: its parameter dataclass, its selection function and a cheap feasibility check.

    ``select(model, rate, params)`` reads the trained weights and returns ``{layer name: layer plan}``;
    it must not modify the model. ``check(model, rate, params)`` raises ``PruningError`` for settings
    that cannot work on this architecture; the runner calls it before any training starts.
    """

    name: str
    params: type
    select: LayerSelect
    check: FeasibilityCheck
    summary: str
