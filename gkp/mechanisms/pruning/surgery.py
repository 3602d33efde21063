"""Module surgery: build the physically smaller model a plan describes, never mutating the input.

``apply(model, plan)`` returns a deep copy whose pruned layers are replaced by smaller ones holding the
kept weights (narrower convs for filter plans, ``GroupedKernelConv2d`` for grouped-kernel plans, and the
layers of ``gkp.mechanisms.layers.restructured`` for removed blocks, factorised convs and adapters);
``apply_mask(model, plan)`` returns a dense copy whose pruned weights are zeroed instead, the reference
that the smaller model must match. A filter plan's ``scales`` multiply its consumers' input weights of the
kept channels, in both.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from gkp.foundation.contracts import FilterGroup, ResidualBlock, model_spec
from gkp.foundation.errors import PruningError
from gkp.mechanisms.layers.grouped_conv import GroupedKernelConv2d
from gkp.mechanisms.layers.restructured import AdaptedConv2d, FactorisedConv2d, RemovedBlock
from gkp.mechanisms.pruning.dependencies import filter_groups, filter_pruning_groups, residual_blocks
from gkp.mechanisms.pruning.plan import (
    AdaptersPlan,
    FactorisedPlan,
    FilterPlan,
    GroupedKernelPlan,
    Plan,
    RemovedBlockPlan,
)


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as error:
        raise PruningError(f"the plan names layer '{name}', which this model does not have") from error


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in place of the submodule ``name``, in the same train/eval mode."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module.train(getattr(parent, child).training))


def _checked_indices(kept: tuple[int, ...], size: int, layer: str) -> torch.Tensor:
    if not kept:
        raise PruningError(f"the plan keeps no channel of '{layer}'")
    if list(kept) != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= size:
        raise PruningError(
            f"the plan's kept channels of '{layer}' must be sorted, unique and in [0, {size}), got {list(kept)}"
        )
    return torch.tensor(kept, dtype=torch.long)


def _sliced_conv(conv: nn.Conv2d, out_index: torch.Tensor | None, in_index: torch.Tensor | None) -> nn.Conv2d:
    if conv.groups != 1 and not (_is_depthwise(conv) and in_index is None):
        raise PruningError("filter pruning of a grouped convolution is not supported (but of a depthwise one)")
    weight = conv.weight.detach()
    weight = weight if out_index is None else weight.index_select(0, out_index.to(weight.device))
    weight = weight if in_index is None else weight.index_select(1, in_index.to(weight.device))
    groups = weight.shape[0] if conv.groups != 1 else 1  # a depthwise conv keeps one group per channel
    new = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        groups,
        conv.bias is not None,
        conv.padding_mode,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if conv.bias is not None:
            bias = conv.bias.detach()
            new.bias.copy_(bias if out_index is None else bias.index_select(0, out_index.to(bias.device)))
    return new


def _sliced_batchnorm(bn: nn.BatchNorm2d, index: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(
        len(index),
        bn.eps,
        bn.momentum,
        bn.affine,
        bn.track_running_stats,
        device=bn.running_mean.device,
        dtype=bn.running_mean.dtype,
    )
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            source = getattr(bn, name)
            if source is not None:
                getattr(new, name).copy_(source.detach().index_select(0, index.to(source.device)))
        if bn.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def _sliced_linear_inputs(linear: nn.Linear, index: torch.Tensor) -> nn.Linear:
    weight = linear.weight.detach().index_select(1, index.to(linear.weight.device))
    new = nn.Linear(weight.shape[1], weight.shape[0], linear.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach())
    return new


def _slice_channelwise(module: nn.Module, index: torch.Tensor, name: str) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d):
        return _sliced_batchnorm(module, index)
    if _is_depthwise(module):
        return _sliced_conv(module, index, None)
    raise PruningError(f"'{name}' ({type(module).__name__}) is neither a depthwise conv nor a BatchNorm")


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels


def _slice_consumer(module: nn.Module, index: torch.Tensor, name: str) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return _sliced_conv(module, None, index)
    if isinstance(module, nn.Linear):
        return _sliced_linear_inputs(module, index)
    raise PruningError(f"cannot remove input channels of '{name}' ({type(module).__name__})")


def _scale_inputs(module: nn.Module, columns: torch.Tensor | None, layer: FilterPlan, name: str) -> None:
    """Multiply the input-channel weights ``columns`` (all when None) of a consumer by the plan's scales."""
    if layer.scales is None:
        return
    if len(layer.scales) != len(layer.kept):
        raise PruningError(f"the plan of '{name}' has {len(layer.scales)} scales for {len(layer.kept)} kept channels")
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise PruningError(f"cannot rescale the input channels of a {type(module).__name__} consumer of '{name}'")
    weight = module.weight
    scales = torch.tensor(layer.scales, dtype=weight.dtype, device=weight.device)
    scales = scales.view(1, -1, *([1] * (weight.dim() - 2)))
    with torch.no_grad():
        if columns is None:
            weight.mul_(scales)
        else:
            columns = columns.to(weight.device)
            weight[:, columns] = weight[:, columns] * scales


def _apply_filters(model: nn.Module, name: str, layer: FilterPlan, groups: dict[str, FilterGroup]) -> None:
    group = groups.get(name)
    if group is None:
        raise PruningError(f"'{name}' is not filter-prunable in this architecture; prunable convs: {', '.join(groups)}")
    conv = get_module(model, group.conv)
    index = _checked_indices(layer.kept, conv.out_channels, name)
    set_module(model, group.conv, _sliced_conv(conv, index, None))
    set_module(model, group.bn, _sliced_batchnorm(get_module(model, group.bn), index))
    for module in group.channelwise:
        set_module(model, module, _slice_channelwise(get_module(model, module), index, module))
    for consumer in group.consumers:
        set_module(model, consumer, _slice_consumer(get_module(model, consumer), index, consumer))
        _scale_inputs(get_module(model, consumer), None, layer, name)


def _mask_filters(model: nn.Module, name: str, layer: FilterPlan, groups: dict[str, FilterGroup]) -> None:
    group = groups.get(name)
    if group is None:
        raise PruningError(f"'{name}' is not filter-prunable in this architecture")
    conv = get_module(model, group.conv)
    dropped = torch.ones(conv.out_channels, dtype=torch.bool)
    dropped[_checked_indices(layer.kept, conv.out_channels, name)] = False
    zeroed = [conv, get_module(model, group.bn), *(get_module(model, module) for module in group.channelwise)]
    with torch.no_grad():
        for tensor in (t for module in zeroed for t in (module.weight, module.bias)):
            if tensor is not None:
                tensor[dropped.to(tensor.device)] = 0
    for consumer in group.consumers:
        _scale_inputs(get_module(model, consumer), torch.tensor(layer.kept, dtype=torch.long), layer, name)


def _grouped_conv(model: nn.Module, name: str, layer: GroupedKernelPlan) -> nn.Conv2d:
    conv = get_module(model, name)
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise PruningError(f"'{name}' is not an ungrouped Conv2d, so its grouped kernels cannot be pruned")
    c_out, c_in = conv.out_channels, conv.in_channels
    if sorted(layer.filter_order) != list(range(c_out)):
        raise PruningError(f"the plan's filter_order of '{name}' must be a permutation of its {c_out} filters")
    groups = len(layer.kept)
    if c_out % groups or len({len(k) for k in layer.kept}) != 1:
        raise PruningError(f"the plan of '{name}' needs equal kept lists for a number of groups dividing {c_out}")
    for kept in layer.kept:
        _checked_indices(kept, c_in, name)
    return conv


def _apply_grouped(model: nn.Module, name: str, layer: GroupedKernelPlan, groups: dict[str, FilterGroup]) -> None:
    conv = _grouped_conv(model, name, layer)
    set_module(
        model, name, GroupedKernelConv2d.from_dense(conv, list(layer.filter_order), [list(k) for k in layer.kept])
    )


def _mask_grouped(model: nn.Module, name: str, layer: GroupedKernelPlan, groups: dict[str, FilterGroup]) -> None:
    conv = _grouped_conv(model, name, layer)
    per_group = conv.out_channels // len(layer.kept)
    dropped = torch.ones(conv.out_channels, conv.in_channels, dtype=torch.bool)
    for g, kept in enumerate(layer.kept):
        filters = torch.tensor(layer.filter_order[g * per_group : (g + 1) * per_group])
        dropped[filters[:, None], torch.tensor(kept)[None, :]] = False
    with torch.no_grad():
        conv.weight[dropped.to(conv.weight.device)] = 0


def _residual_block(model: nn.Module, name: str) -> ResidualBlock:
    blocks = residual_blocks(model)
    if name not in blocks:
        raise PruningError(f"'{name}' is not a residual block of this architecture; its blocks: {', '.join(blocks)}")
    return blocks[name]


def _apply_removed_block(model: nn.Module, name: str, layer: RemovedBlockPlan, groups) -> None:
    shortcut = getattr(get_module(model, name), _residual_block(model, name).shortcut, None)
    set_module(model, name, RemovedBlock(shortcut if shortcut is not None else nn.Identity()))


def _mask_removed_block(model: nn.Module, name: str, layer: RemovedBlockPlan, groups) -> None:
    norm = getattr(get_module(model, name), _residual_block(model, name).last_norm)
    with torch.no_grad():
        for tensor in (norm.weight, norm.bias):
            if tensor is not None:
                tensor.zero_()


def _plain_conv(model: nn.Module, name: str) -> nn.Conv2d:
    conv = get_module(model, name)
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        raise PruningError(f"'{name}' is not an ungrouped Conv2d, so it cannot be factorised or adapted")
    return conv


def _factorised_rank(conv: nn.Conv2d, layer: FactorisedPlan, name: str) -> int | None:
    _checked_indices(layer.keep_in, conv.in_channels, name)
    largest = min(conv.out_channels, len(layer.keep_in) * conv.kernel_size[0] * conv.kernel_size[1])
    if layer.rank is not None and not 1 <= layer.rank <= largest:
        raise PruningError(f"the plan's rank of '{name}' must be in [1, {largest}], got {layer.rank}")
    return layer.rank


def _apply_factorised(model: nn.Module, name: str, layer: FactorisedPlan, groups) -> None:
    conv = _plain_conv(model, name)
    rank = _factorised_rank(conv, layer, name)
    set_module(model, name, FactorisedConv2d.from_dense(conv, list(layer.keep_in), rank))


def _mask_factorised(model: nn.Module, name: str, layer: FactorisedPlan, groups) -> None:
    """The dense conv whose weight is the factorised one's product, zero outside ``keep_in``."""
    conv = _plain_conv(model, name)
    factorised = FactorisedConv2d.from_dense(conv, list(layer.keep_in), _factorised_rank(conv, layer, name))
    with torch.no_grad():
        conv.weight.zero_()[:, factorised.keep_in] = factorised.dense_weight().to(conv.weight.dtype)


def _apply_adapters(model: nn.Module, name: str, layer: AdaptersPlan, groups) -> None:
    conv = _plain_conv(model, name)
    _checked_indices(layer.keep_in, conv.in_channels, name)
    _checked_indices(layer.keep_out, conv.out_channels, name)
    set_module(model, name, AdaptedConv2d.from_dense(conv, list(layer.keep_in), list(layer.keep_out)))


def _mask_adapters(model: nn.Module, name: str, layer: AdaptersPlan, groups) -> None:
    conv = _plain_conv(model, name)
    kept = torch.zeros(conv.out_channels, conv.in_channels, dtype=torch.bool)
    rows = _checked_indices(layer.keep_out, conv.out_channels, name)
    kept[rows[:, None], _checked_indices(layer.keep_in, conv.in_channels, name)[None, :]] = True
    with torch.no_grad():
        conv.weight[~kept.to(conv.weight.device)] = 0


APPLY = {
    FilterPlan.type: _apply_filters,
    GroupedKernelPlan.type: _apply_grouped,
    RemovedBlockPlan.type: _apply_removed_block,
    FactorisedPlan.type: _apply_factorised,
    AdaptersPlan.type: _apply_adapters,
}
MASK = {
    FilterPlan.type: _mask_filters,
    GroupedKernelPlan.type: _mask_grouped,
    RemovedBlockPlan.type: _mask_removed_block,
    FactorisedPlan.type: _mask_factorised,
    AdaptersPlan.type: _mask_adapters,
}


def _permute_inputs(module: nn.Module, order: torch.Tensor, restore: torch.Tensor) -> None:
    """Make ``module`` read its inputs in grouped order (position q = original channel order[q])."""
    if isinstance(module, GroupedKernelConv2d):
        module.gather.copy_(restore[module.gather])
    else:
        module.weight.data = module.weight.data.index_select(1, order.to(module.weight.device))


def _can_read_grouped_order(module: nn.Module) -> bool:
    return isinstance(module, (GroupedKernelConv2d, nn.Linear)) or (
        isinstance(module, nn.Conv2d) and module.groups == 1
    )


def fold_output_orders(model: nn.Module) -> None:
    """Where a grouped-kernel conv feeds only a BatchNorm and then convs or linear layers (the
    architecture's filter groups), leave its outputs in grouped order: permute the BatchNorm's channels
    and the consumers' inputs instead, and drop the output permutation. The function is unchanged."""
    present = dict(model.named_modules())
    for group in filter_pruning_groups(model):
        if group.conv not in present or group.channelwise:  # gone with a removed block; depthwise in between
            continue
        conv = present[group.conv]
        consumers = [get_module(model, name) for name in group.consumers]
        if not isinstance(conv, GroupedKernelConv2d) or conv.restore is None:
            continue
        if not all(_can_read_grouped_order(c) for c in consumers):
            continue
        restore = conv.restore
        order = torch.argsort(restore)
        bn = get_module(model, group.bn)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                tensor = getattr(bn, name)
                if tensor is not None:
                    tensor.copy_(tensor.index_select(0, order.to(tensor.device)))
            for consumer in consumers:
                _permute_inputs(consumer, order, restore)
        conv.restore = None


def _check_removed_blocks_stand_alone(plan: Plan) -> None:
    """A removed block's layers are gone with it: no other plan entry may name one of them."""
    removed = [name for name, layer in plan.layers.items() if layer.type == RemovedBlockPlan.type]
    for name in plan.layers:
        inside = next((block for block in removed if name.startswith(f"{block}.")), None)
        if inside is not None:
            raise PruningError(f"the plan prunes '{name}', a layer of the block '{inside}' it also removes")


def _transform(model: nn.Module, plan: Plan, handlers: dict) -> nn.Module:
    _check_removed_blocks_stand_alone(plan)
    result = copy.deepcopy(model)
    groups = filter_groups(model) if any(layer.type == FilterPlan.type for layer in plan.layers.values()) else {}
    for name, layer in plan.layers.items():
        handlers[layer.type](result, name, layer, groups)
    return result


def apply(model: nn.Module, plan: Plan) -> nn.Module:
    """The physically smaller model of ``plan``; ``model`` itself is left unchanged. A model built from the
    registry carries its ``ModelSpec`` (with the plan added), so that its checkpoint rebuilds it."""
    pruned = _transform(model, plan, APPLY)
    if any(layer.type == GroupedKernelPlan.type for layer in plan.layers.values()):
        fold_output_orders(pruned)
    if hasattr(model, "gkp_spec"):
        pruned.gkp_spec = replace(model_spec(model), plan=plan.to_dict())
    return pruned


def apply_mask(model: nn.Module, plan: Plan) -> nn.Module:
    """A dense copy with every pruned filter and its BatchNorm channel set to zero (and the kept channels'
    consumer weights multiplied by the plan's scales, where it has them)."""
    return _transform(model, plan, MASK)
