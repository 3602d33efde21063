"""The contract every one-shot pruning method fulfils, so the runner needs no per-method code."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from gkp.errors import PruningError

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class PruningContext:
    """What a method may read besides the trained weights, its rate and its parameters.

    ``snapshots(epoch)`` returns the dense model's state_dict saved by the training stage after that
    (1-based) epoch; methods ask for the epochs they need through ``PruningMethod.snapshot_epochs``.
    ``calibration()`` returns the seeded training batches data-dependent methods read (``prune.calibration``).
    ``rates`` (per-layer rates by module-name prefix) and ``target_macs`` (a fraction of the dense MACs)
    refine the uniform rate for the methods whose ``budgets`` accept them; ``input_size`` is the image
    side the MACs are counted at. A method may add what it decided (a solved rate, say) to ``notes``,
    which ``plan.json`` records.
    """

    snapshots: Callable[[int], dict[str, torch.Tensor]] | None = None
    calibration: Callable[[], list[Batch]] | None = None
    rates: Mapping[str, float] = field(default_factory=dict)
    target_macs: float | None = None
    input_size: int = 32
    notes: dict[str, Any] = field(default_factory=dict)

    def snapshot(self, epoch: int) -> dict[str, torch.Tensor]:
        if self.snapshots is None:
            raise PruningError("this method needs training snapshots, and none were given")
        return self.snapshots(epoch)

    def calibration_batches(self) -> list[Batch]:
        if self.calibration is None:
            raise PruningError("this method reads calibration images (prune.calibration), and none were given")
        batches = self.calibration()
        self.notes["calibration"] = {"batches": len(batches), "images": sum(len(y) for _, y in batches)}
        return batches


NO_CONTEXT = PruningContext()


def no_snapshots(params: Any) -> tuple[int, ...]:
    return ()


@dataclass(frozen=True)
class PruningMethod:
    """A pruning method: its parameter dataclass, its selection function and a cheap feasibility check.

    ``select(model, rate, params, context)`` reads the trained weights (and the context) and returns
    ``{layer name: layer plan}``; it must not modify the model. ``check(model, rate, params, context)`` raises
    ``PruningError`` for settings that cannot work on this architecture; the runner calls it before any
    training starts. ``snapshot_epochs(params)`` lists the training snapshots the method reads.
    ``budgets`` names how its size may be set (``rate``, and for filter methods ``rates`` and
    ``target_macs``); ``calibrated`` methods read calibration images.
    """

    name: str
    params: type
    select: Callable[..., dict[str, Any]]
    check: Callable[..., None]
    summary: str
    snapshot_epochs: Callable[[Any], tuple[int, ...]] = field(default=no_snapshots)
    budgets: frozenset[str] = frozenset({"rate"})
    calibrated: bool = False
