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


LAYER_TYPES: dict[str, type] = {FilterPlan.type: FilterPlan, GroupedKernelPlan.type: GroupedKernelPlan}


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
            f"rate {rate} would remove all {total} channels of '{layer}'; rates up to {largest:.4f} keep at least one"
        )
    return kept


def keep_top_k(scores: Sequence[float] | np.ndarray, k: int) -> tuple[int, ...]:
    """Indices of the k highest scores, ascending; ties go to the lower index."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return tuple(sorted(int(i) for i in order[:k]))
