"""Parameter and multiply-accumulate (MAC) counts of any model, dense, filter-pruned or grouped.

MACs count what convolutions and linear layers multiply: per sample, a conv costs
``output elements x (in_channels / groups) x kernel area`` and a linear layer ``in x out``. They are
measured by running one dummy input through the model with forward hooks, so pruned and grouped
layers are counted as they really are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gkp.grouped.conv import GroupedKernelConv2d


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int

    def describe(self) -> str:
        return f"{self.params / 1e6:.3f}M params, {self.macs / 1e6:.3f}M MACs"


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    per_sample_outputs = output[0].numel()
    if isinstance(module, nn.Conv2d):
        kernel_area = module.kernel_size[0] * module.kernel_size[1]
        return per_sample_outputs * (module.in_channels // module.groups) * kernel_area
    if isinstance(module, GroupedKernelConv2d):
        return per_sample_outputs * module.keep * module.kernel_size[0] * module.kernel_size[1]
    return per_sample_outputs * module.in_features


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int | tuple[int, int], channels: int = 3) -> int:
    """MACs of one forward pass of a single ``channels x H x W`` image."""
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    total = 0

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += _layer_macs(module, output)

    counted = (nn.Conv2d, GroupedKernelConv2d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    reference = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, channels, height, width, device=reference.device, dtype=reference.dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def measure(model: nn.Module, input_size: int | tuple[int, int]) -> Cost:
    return Cost(count_params(model), count_macs(model, input_size))
