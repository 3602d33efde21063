"""How many channels each prunable conv keeps: a uniform rate, a per-layer/per-stage rate map, a global
ranking, or whatever of these hits a MACs target.

``MacsModel`` predicts a filter-pruned model's MACs from its per-layer keep counts without building it:
a conv costs ``output positions x kernel area x inputs x outputs`` (``/ groups``) and a linear layer
``inputs x outputs``, where a filter group's conv has the group's count as outputs and its consumers have
it as inputs (a depthwise conv among its ``channelwise`` modules costs ``positions x kernel area x
count``). It agrees with ``gkp.mechanisms.counting.measure`` (convention ``macs``) on the physically pruned
model, which the tests check for every method.

Targets: ``target_macs`` is the kept fraction of the dense MACs. Layer-wise methods find the uniform rate
whose floor counts are just above the target, then remove single channels, layer by layer in the order
the next rate step would, until the MACs reach it; global methods remove channels in global score order
until they reach it. One channel of a CIFAR ResNet-56 or VGG-16 costs well under 0.5% of the dense MACs,
so the result lands within 0.5% of the target.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gkp.foundation.contracts import FilterGroup
from gkp.foundation.errors import PruningError
from gkp.mechanisms.counting import forward_once
from gkp.mechanisms.pruning.plan import keep_count

TARGET_TOLERANCE = 0.005
RATE_SEARCH_STEPS = 50


@dataclass(frozen=True)
class _Layer:
    cost: int  # MACs per input channel per output channel
    inputs: int
    outputs: int
    input_group: str | None
    output_group: str | None


class MacsModel:
    """MACs of the model as a function of the filter groups' keep counts (one dummy forward pass)."""

    def __init__(self, model: nn.Module, groups: Mapping[str, FilterGroup], input_size: int):
        consumers = {consumer: group.conv for group in groups.values() for consumer in group.consumers}
        channelwise = {module: group.conv for group in groups.values() for module in group.channelwise}
        self.channels = {name: model.get_submodule(name).out_channels for name in groups}
        self._layers: list[_Layer] = []
        hooks = []
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                hooks.append(module.register_forward_hook(self._recorder(name, consumers, channelwise.get(name, name))))
        forward_once(model, input_size, hooks)

    def _recorder(self, name: str, consumers: Mapping[str, str], owner: str):
        """Records the layer ``name``; ``owner``: the filter group whose count is its outputs (itself, or the
        group a depthwise conv shrinks with), if there is one."""

        def record(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if isinstance(module, nn.Conv2d):
                area = module.kernel_size[0] * module.kernel_size[1]
                cost = output[0, 0].numel() * area
                inputs_, outputs = module.in_channels // module.groups, module.out_channels
            else:
                cost, inputs_, outputs = 1, module.in_features, module.out_features
            output_group = owner if owner in self.channels else None
            self._layers.append(_Layer(cost, inputs_, outputs, consumers.get(name), output_group))

        return record

    def macs(self, counts: Mapping[str, int]) -> int:
        total = 0
        for layer in self._layers:
            inputs = counts.get(layer.input_group, layer.inputs) if layer.input_group else layer.inputs
            outputs = counts.get(layer.output_group, layer.outputs) if layer.output_group else layer.outputs
            total += layer.cost * inputs * outputs
        return total

    @property
    def dense(self) -> int:
        return self.macs(self.channels)


def layer_rates(layers: list[str], rate: float, rates: Mapping[str, float]) -> dict[str, float]:
    """Each layer's rate: the value of the longest ``rates`` key that is the layer's name or a dotted
    prefix of it (``layer2`` covers ``layer2.3.conv1``), else the uniform ``rate``."""
    resolved = {}
    for layer in layers:
        matches = [key for key in rates if layer == key or layer.startswith(f"{key}.")]
        resolved[layer] = float(rates[max(matches, key=len)]) if matches else rate
    return resolved


def check_rate_map(layers: list[str], rates: Mapping[str, float]) -> None:
    for key, value in rates.items():
        if not any(layer == key or layer.startswith(f"{key}.") for layer in layers):
            raise PruningError(
                f"prune.rates: '{key}' names no prunable layer; prunable layers: {', '.join(layers)} "
                "(a key may be a dotted prefix such as 'layer2')"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise PruningError(f"prune.rates.{key}: must be a rate in [0, 1), got {value!r}")


def uniform_counts(channels: Mapping[str, int], rates: Mapping[str, float]) -> dict[str, int]:
    return {name: keep_count(size, rates[name], name) for name, size in channels.items()}


def _target_macs(macs: MacsModel, target: float) -> int:
    goal = round(target * macs.dense)
    lowest = macs.macs(dict.fromkeys(macs.channels, 1))
    if goal < lowest:
        raise PruningError(
            f"prune.target_macs: {target} is below what one channel per pruned layer costs "
            f"({lowest / macs.dense:.4f} of the dense MACs); raise it"
        )
    return goal


def layerwise_counts_for_target(macs: MacsModel, target: float) -> tuple[dict[str, int], float]:
    """Keep counts whose MACs are within 0.5% of ``target`` x dense, and the uniform rate they refine."""
    goal = _target_macs(macs, target)
    channels = macs.channels

    def counts_at(rate: float) -> dict[str, int]:
        return {name: max(1, int(np.floor((1.0 - rate) * size + 1e-9))) for name, size in channels.items()}

    low, high = 0.0, 1.0  # MACs at ``low`` >= goal > MACs at ``high``
    for _ in range(RATE_SEARCH_STEPS):
        middle = (low + high) / 2
        if macs.macs(counts_at(middle)) >= goal:
            low = middle
        else:
            high = middle
    counts, below = counts_at(low), counts_at(high)
    # Step from the count vector above the goal towards the one below, one channel at a time.
    for name in sorted(channels, key=lambda n: (counts[n] - below[n], n), reverse=True):
        while counts[name] > below[name] and macs.macs({**counts, name: counts[name] - 1}) >= goal:
            counts[name] -= 1
    return counts, low


def global_counts(scores: Mapping[str, np.ndarray], removed: int) -> dict[str, int]:
    """Remove the ``removed`` globally lowest-scoring channels, never the last one of a layer; ties go
    to the earlier layer, then the lower channel index, last."""
    names = list(scores)
    entries = [(float(s), -names.index(name), -i, name) for name in names for i, s in enumerate(scores[name])]
    entries.sort()
    counts = {name: len(scores[name]) for name in names}
    for _, _, _, name in entries:
        if removed == 0:
            break
        if counts[name] > 1:
            counts[name] -= 1
            removed -= 1
    return counts


def global_counts_for_rate(scores: Mapping[str, np.ndarray], rate: float) -> dict[str, int]:
    total = sum(len(s) for s in scores.values())
    removable = total - len(scores)
    removed = min(int(np.floor(rate * total + 1e-9)), removable)
    return global_counts(scores, removed)


def global_counts_for_target(scores: Mapping[str, np.ndarray], macs: MacsModel, target: float) -> dict[str, int]:
    """The fewest global removals whose MACs are at most ``target`` x dense (bisection)."""
    goal = _target_macs(macs, target)
    low, high = 0, sum(len(s) for s in scores.values()) - len(scores)
    while low < high:
        middle = (low + high) // 2
        if macs.macs(global_counts(scores, middle)) <= goal:
            high = middle
        else:
            low = middle + 1
    return global_counts(scores, low)
