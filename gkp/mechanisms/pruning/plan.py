"""The pruning plan: a JSON-serialisable record of what each pruned layer keeps.

``plan.json`` looks like::

    {"format": 1, "method": "l1", "rate": 0.4375, "params": {},
     "layers": {"layer1.0.conv1": {"type": "filters", "kept": [0, 3, 4, ...]}, ...},
     "metadata": {...}}

``filters`` layers keep the listed output channels of a conv (and, through the architecture's
dependency table, the same channels of its BatchNorm and of its consumers' inputs). An optional
``"scales": [s_0, s_1, ...]``, one number per kept channel (ThiNet's least-squares reconstruction),
multiplies the weights with which every consumer reads kept channel ``kept[i]`` by ``s_i``; without it
the consumers keep their weights.
``grouped_kernels`` layers (GKP) list the conv's filters grouped (``filter_order``) and, per group, the
input channels whose kernels it keeps (``kept``); the conv becomes a grouped convolution.

Plans that change the structure further (``gkp.mechanisms.layers.restructured``): a ``removed_block`` entry
names a residual block whose branch is removed (it computes its shortcut alone); a ``factorised`` conv reads
``keep_in`` of its input channels through a ``rank``-channel conv and a 1x1 conv (the truncated SVD of the
dense weights), or, with ``"rank": null``, through the input-pruned conv alone; an ``adapters`` conv sits
between 1x1 convs and keeps ``keep_in`` x ``keep_out`` of its weights. Each is rebuilt from the dense model
and the plan alone; a method that trains the new layers saves their weights in its checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from gkp.foundation.errors import PruningError

PLAN_FORMAT = 1


@dataclass(frozen=True)
class FilterPlan:
    """Keep these output channels (sorted, unique) of one conv; ``scales`` (optional, one per kept
    channel) rescales the consumers' input weights of the kept channels."""

    kept: tuple[int, ...]
    scales: tuple[float, ...] | None = None
    type: ClassVar[str] = "filters"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type, "kept": list(self.kept)}
        if self.scales is not None:
            data["scales"] = list(self.scales)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> FilterPlan:
        kept = _index_list(data.get("kept"), f"{where}.kept")
        scales = data.get("scales")
        if scales is None:
            return cls(kept)
        if (
            not isinstance(scales, list)
            or len(scales) != len(kept)
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scales)
        ):
            raise PruningError(
                f"{where}.scales must be a list of {len(kept)} finite numbers, one per kept channel, got {scales!r}"
            )
        return cls(kept, tuple(float(s) for s in scales))


@dataclass(frozen=True)
class GroupedKernelPlan:
    """Grouped kernel pruning of one conv: the filters, in ``filter_order``, form ``len(kept)`` equal
    groups; group g keeps the input channels ``kept[g]`` (sorted) of its filters' kernels."""

    filter_order: tuple[int, ...]
    kept: tuple[tuple[int, ...], ...]
    type: ClassVar[str] = "grouped_kernels"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "filter_order": list(self.filter_order), "kept": [list(k) for k in self.kept]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> GroupedKernelPlan:
        kept = data.get("kept")
        if not isinstance(kept, list) or not kept:
            raise PruningError(f"{where}.kept must be a list of kept-channel lists, one per group, got {kept!r}")
        return cls(
            _index_list(data.get("filter_order"), f"{where}.filter_order"),
            tuple(_index_list(k, f"{where}.kept[{g}]") for g, k in enumerate(kept)),
        )


@dataclass(frozen=True)
class RemovedBlockPlan:
    """Remove the residual branch of one block: the block computes its shortcut alone."""

    type: ClassVar[str] = "removed_block"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> RemovedBlockPlan:
        extra = sorted(set(data) - {"type"})
        if extra:
            raise PruningError(f"{where}: a removed block takes no keys, got {', '.join(extra)}")
        return cls()


@dataclass(frozen=True)
class FactorisedPlan:
    """Factorise one conv: read its input channels ``keep_in`` (sorted), through ``rank`` channels (None:
    the input-pruned conv alone, unfactorised)."""

    keep_in: tuple[int, ...]
    rank: int | None
    type: ClassVar[str] = "factorised"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "keep_in": list(self.keep_in), "rank": self.rank}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> FactorisedPlan:
        rank = data.get("rank")
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
            raise PruningError(f"{where}.rank must be a whole number >= 1 (or null: no factorisation), got {rank!r}")
        return cls(_index_list(data.get("keep_in"), f"{where}.keep_in"), rank)


@dataclass(frozen=True)
class AdaptersPlan:
    """Put 1x1 convs around one conv, which keeps its input channels ``keep_in`` and outputs ``keep_out``."""

    keep_in: tuple[int, ...]
    keep_out: tuple[int, ...]
    type: ClassVar[str] = "adapters"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "keep_in": list(self.keep_in), "keep_out": list(self.keep_out)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> AdaptersPlan:
        return cls(
            _index_list(data.get("keep_in"), f"{where}.keep_in"), _index_list(data.get("keep_out"), f"{where}.keep_out")
        )


LAYER_TYPES: dict[str, type] = {
    kind.type: kind for kind in (FilterPlan, GroupedKernelPlan, RemovedBlockPlan, FactorisedPlan, AdaptersPlan)
}


@dataclass(frozen=True)
class Plan:
    method: str
    rate: float | None
    layers: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "method": self.method,
            "rate": self.rate,
            "params": self.params,
            "layers": {name: layer.to_dict() for name, layer in self.layers.items()},
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "plan") -> Plan:
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or "layers" not in data:
            raise PruningError(
                f"{source} is not a pruning plan of format {PLAN_FORMAT} (expected keys format, method, rate, layers)"
            )
        layers = {}
        for name, layer in data["layers"].items():
            kind = layer.get("type") if isinstance(layer, dict) else None
            if kind not in LAYER_TYPES:
                raise PruningError(
                    f"{source}: layer '{name}' has unknown type {kind!r}; known types: {', '.join(LAYER_TYPES)}"
                )
            layers[name] = LAYER_TYPES[kind].from_dict(layer, f"{source}: layers.{name}")
        return cls(
            data.get("method", "unknown"),
            data.get("rate"),
            layers,
            dict(data.get("params") or {}),
            dict(data.get("metadata") or {}),
        )


def _index_list(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise PruningError(f"{where} must be a list of channel indices, got {value!r}")
    return tuple(value)


def keep_count(total: int, rate: float, layer: str) -> int:
    """How many of ``total`` units survive pruning at ``rate``: floor((1 - rate) * total).

    The small epsilon keeps exact products such as (1 - 0.3) * 10 from rounding down to 6.
    """
    kept = math.floor((1.0 - rate) * total + 1e-9)
    if kept < 1:
        largest = 1.0 - 1.0 / total
        raise PruningError(
            f"prune.rate: rate {rate} would remove all {total} channels of '{layer}'; rates up to {largest:.4f} "
            "keep at least one"
        )
    return kept


def keep_top_k(scores: Sequence[float] | np.ndarray, k: int) -> tuple[int, ...]:
    """Indices of the k highest scores, ascending; ties go to the lower index."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return tuple(sorted(int(i) for i in order[:k]))
