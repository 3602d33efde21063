"""The contract every one-shot pruning method fulfils, so the runner needs no per-method code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from gkp.errors import PruningError


@dataclass(frozen=True)
class PruningContext:
    """What a method may read besides the trained weights and its parameters.

    ``snapshots(epoch)`` returns the dense model's state_dict saved by the training stage after that
    (1-based) epoch; methods ask for the epochs they need through ``PruningMethod.snapshot_epochs``.
    """

    snapshots: Callable[[int], dict[str, torch.Tensor]] | None = None

    def snapshot(self, epoch: int) -> dict[str, torch.Tensor]:
        if self.snapshots is None:
            raise PruningError("this method needs training snapshots, and none were given")
        return self.snapshots(epoch)


NO_CONTEXT = PruningContext()


def no_snapshots(params: Any) -> tuple[int, ...]:
    return ()


@dataclass(frozen=True)
class PruningMethod:
    """A pruning method: its parameter dataclass, its selection function and a cheap feasibility check.

    ``select(model, rate, params, context)`` reads the trained weights (and the context) and returns
    ``{layer name: layer plan}``; it must not modify the model. ``check(model, rate, params)`` raises
    ``PruningError`` for settings that cannot work on this architecture; the runner calls it before any
    training starts. ``snapshot_epochs(params)`` lists the training snapshots the method reads.
    """

    name: str
    params: type
    select: Callable[..., dict[str, Any]]
    check: Callable[[nn.Module, float, Any], None]
    summary: str
    snapshot_epochs: Callable[[Any], tuple[int, ...]] = field(default=no_snapshots)
