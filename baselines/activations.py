"""What the data-dependent baselines read from calibration batches: each filter group's feature maps
(the ReLU of its BatchNorm's output) or its consumer's input, batch by batch, in eval mode without
gradients, so that no method holds more than one batch of activations at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from gkp.foundation.contracts import Batch, FilterGroup

Reduce = Callable[[str, torch.Tensor], None]


def _run(model: nn.Module, batches: Iterable[Batch], hooks: list) -> None:
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for x, _ in tqdm(batches, desc="calibration batches", unit="batch", leave=False, disable=None):
                model(x)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()


def feature_maps(model: nn.Module, groups: Mapping[str, FilterGroup], batches: Iterable[Batch], reduce: Reduce) -> None:
    """Call ``reduce(conv name, relu(bn output))`` for every group and calibration batch ((N, C, H, W))."""
    hooks = [
        model.get_submodule(group.bn).register_forward_hook(
            lambda module, inputs, output, name=name: reduce(name, F.relu(output))
        )
        for name, group in groups.items()
    ]
    _run(model, batches, hooks)


def consumer_inputs(
    model: nn.Module, groups: Mapping[str, FilterGroup], batches: Iterable[Batch], reduce: Reduce
) -> None:
    """Call ``reduce(conv name, input of the group's first consumer)`` for every group and batch: the
    feature maps as the next layer reads them (after pooling where the architecture pools in between)."""
    hooks = [
        model.get_submodule(group.consumers[0]).register_forward_pre_hook(
            lambda module, inputs, name=name: reduce(name, inputs[0])
        )
        for name, group in groups.items()
    ]
    _run(model, batches, hooks)
