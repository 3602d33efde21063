"""Filter masks for pruning during training: which convs are masked, zeroing their filters (and, for the
methods that do, the BatchNorm channel after them), masking their gradients, and turning a trained masked
model into a plan.

A masked model keeps its dense shapes with some filters exactly zero. Under option-A (zero-padding)
shortcuts only the filters of a block's inner conv (``PrunableModel.filter_pruning_groups``) can be cut
out physically; zeroed filters of the stem and of each block's last conv feed a residual sum and stay in
the physical model as zeros (``zero_masks`` in the plan's notes). Where a method leaves the BatchNorm of a
zeroed filter active, the channel still emits a constant (its BatchNorm's output for a zero input,
through the ReLU), so the physical model, which drops it, differs from the masked one: the prune stage
(``gkp.application.pipeline.prune``) measures and reports that difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from gkp.foundation.contracts import Selection
from gkp.foundation.errors import PruningError
from gkp.mechanisms.pruning.dependencies import filter_groups, filter_pruning_groups
from gkp.mechanisms.pruning.plan import FilterPlan

Masks = dict[str, torch.Tensor]  # conv name -> (out_channels,) bool, True = kept


def conv_batchnorms(model: nn.Module) -> dict[str, str]:
    """Each plain conv's BatchNorm: the next BatchNorm2d registered after it, before any other conv, with
    as many features as the conv has filters."""
    pairs, pending = {}, None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            pending = (name, module.out_channels)
        elif isinstance(module, nn.BatchNorm2d) and pending and module.num_features == pending[1]:
            pairs[pending[0]] = name
            pending = None
    return pairs


def mask_targets(model: nn.Module, scope: str) -> list[str]:
    """The convs a training-time method masks, in registration order (the forward order of every
    registered architecture): ``all``, every ungrouped conv (the stem,
    each block's convs and any projection shortcut, as SFP's and FPGM's CIFAR code mask them); ``inner``,
    only the convs whose filters can be removed physically."""
    if scope == "inner":
        return [group.conv for group in filter_pruning_groups(model)]
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1]


def pruned_count(total: int, rate: float, layer: str) -> int:
    """How many of ``total`` filters a rate zeroes: floor(total x rate), as SFP, FPGM and HRank count;
    at least one filter must remain."""
    count = math.floor(total * rate + 1e-9)
    if count >= total:
        raise PruningError(f"rate {rate} would zero all {total} filters of '{layer}'")
    return count


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The keep mask that drops the ``count`` lowest scores (ties: the lower index is dropped first)."""
    keep = torch.ones(len(scores), dtype=torch.bool, device=scores.device)
    order = torch.sort(scores.detach().double().cpu(), stable=True).indices[:count]
    keep[order.to(scores.device)] = False
    return keep


def _per_filter(keep: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """The keep mask as 1s and 0s broadcastable over ``tensor``'s first dimension (no host sync)."""
    return keep.to(device=tensor.device, dtype=tensor.dtype).view(-1, *([1] * (tensor.dim() - 1)))


@torch.no_grad()
def zero_filters(
    model: nn.Module, masks: Mapping[str, torch.Tensor], batchnorms: Mapping[str, str] | None = None
) -> None:
    """Zero every masked-out filter (weight and bias) and, given ``batchnorms`` (conv -> BN), the scale and
    shift of its BatchNorm channel too."""
    for name, keep in masks.items():
        conv = model.get_submodule(name)
        parameters = [conv.weight, conv.bias]
        if batchnorms is not None and name in batchnorms:
            bn = model.get_submodule(batchnorms[name])
            parameters += [bn.weight, bn.bias]
        for parameter in parameters:
            if parameter is not None:
                parameter.mul_(_per_filter(keep, parameter))


def mask_gradients(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the gradients of masked-out filters so that an SGD step, momentum and weight decay included,
    leaves them exactly zero."""
    for name, keep in masks.items():
        conv = model.get_submodule(name)
        for parameter in (conv.weight, conv.bias):
            if parameter is not None and parameter.grad is not None:
                parameter.grad.mul_(_per_filter(keep, parameter.grad))


def zeroed_filters(model: nn.Module) -> dict[str, list[int]]:
    """The filters of each ungrouped conv whose weights are all exactly zero."""
    zeroed = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            indices = (module.weight.detach().flatten(1) == 0).all(dim=1).nonzero().flatten().tolist()
            if indices:
                zeroed[name] = indices
    return zeroed


def masked_selection(model: nn.Module) -> Selection:
    """The plan of a trained masked model: every removable conv keeps its non-zero filters; the zeroed
    filters that cannot be removed are listed in the notes as ``zero_masks``."""
    groups = filter_groups(model)
    zeroed = zeroed_filters(model)
    layers = {}
    for name, indices in zeroed.items():
        if name not in groups:
            continue
        total = model.get_submodule(name).out_channels
        if len(indices) == total:
            raise PruningError(f"training left every filter of '{name}' zero; nothing of the layer remains")
        layers[name] = FilterPlan(tuple(i for i in range(total) if i not in set(indices)))
    zero_masks = {name: indices for name, indices in zeroed.items() if name not in groups}
    return Selection(layers, {"zero_masks": zero_masks} if zero_masks else {})
