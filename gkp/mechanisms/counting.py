"""Parameter and multiply-accumulate (MAC) counts of any model, dense, filter-pruned or grouped.

Two conventions:

- ``"macs"`` (default): what convolutions and linear layers multiply. Per sample, a conv costs
  ``output elements x (in_channels / groups) x kernel area``, a grouped-kernel conv
  ``output elements x kept kernels x kernel area``, a linear layer ``in x out``.
- ``"authors"``: the SR-GKP authors' counts (their tables' MACs, ``get_macs_dpf`` with
  ``ignore_zero=True``): a conv or linear layer costs its **non-zero** weights x output positions, so
  filters zeroed in place (the training-time baselines' masks) count as removed; and they add 2 per
  BatchNorm output element and, for every pooling layer, 1 per element its windows read (output elements
  x window area; a model's own modules that they counted as pooling, such as the option-A shortcut's
  subsampling, their ``AvgPool2d(kernel_size=1, stride=2)``, say what they read:
  ``gkp.foundation.contracts.CountedAsPooling``). With it, ResNet-56 on 32x32 inputs counts 126.561M MACs as in
  their Table 2, and with 43.75% of the filters of every conv zeroed 71.661M, as their FPGM row.

Counts are measured by running one dummy input through the model with forward hooks, so pruned and
grouped layers are counted as they really are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gkp.foundation.contracts import CountedAsPooling
from gkp.mechanisms.layers.grouped_conv import GroupedKernelConv2d

Convention = Literal["macs", "authors"]


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int

    def describe(self) -> str:
        return f"{self.params / 1e6:.3f}M params, {self.macs / 1e6:.3f}M MACs"


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    """Parameters that are not exactly zero (a masked model's zeroed filters left out)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _window_area(module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> int:
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return (inputs.shape[-2] // output.shape[-2]) * (inputs.shape[-1] // output.shape[-1])
    height, width = _pair(module.kernel_size)
    return height * width


def _nonzero_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Non-zero weights x output positions (a linear layer has one position)."""
    positions = output[0].numel() // output.shape[1]
    return int(torch.count_nonzero(module.weight)) * positions


def _multiply_macs(module: nn.Module, output: torch.Tensor) -> int:
    per_sample_outputs = output[0].numel()
    if isinstance(module, nn.Conv2d):
        kernel_area = module.kernel_size[0] * module.kernel_size[1]
        return per_sample_outputs * (module.in_channels // module.groups) * kernel_area
    if isinstance(module, GroupedKernelConv2d):
        return per_sample_outputs * module.keep * module.kernel_size[0] * module.kernel_size[1]
    return per_sample_outputs * module.in_features


POOLS = (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _authors_extra(module: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> int:
    if isinstance(module, nn.BatchNorm2d):
        return 2 * output[0].numel()
    if isinstance(module, CountedAsPooling):
        return module.pooled_reads(inputs, output)
    return output[0].numel() * _window_area(module, inputs, output)


def count_macs(
    model: nn.Module, input_size: int | tuple[int, int], channels: int = 3, convention: Convention = "macs"
) -> int:
    """MACs of one forward pass of a single ``channels x H x W`` image."""
    total = 0

    multiply = _nonzero_macs if convention == "authors" else _multiply_macs

    def multiply_hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += multiply(module, output)

    def authors_hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += _authors_extra(module, inputs[0], output)

    handles = [
        m.register_forward_hook(multiply_hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, GroupedKernelConv2d, nn.Linear))
    ]
    if convention == "authors":
        handles += [
            m.register_forward_hook(authors_hook)
            for m in model.modules()
            if isinstance(m, (nn.BatchNorm2d, *POOLS, CountedAsPooling))
        ]
    forward_once(model, input_size, handles, channels)
    return total


@torch.no_grad()
def forward_once(
    model: nn.Module, input_size: int | tuple[int, int], handles: list[RemovableHandle], channels: int = 3
) -> None:
    """One forward pass of a zero image in eval mode, for the hooks ``handles`` that measure it; the
    model's mode is restored and the hooks removed afterwards."""
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    reference = next(model.parameters())
    was_training = model.training
    try:
        model.eval()(torch.zeros(1, channels, height, width, device=reference.device, dtype=reference.dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def measure(model: nn.Module, input_size: int | tuple[int, int], convention: Convention = "macs") -> Cost:
    return Cost(count_params(model), count_macs(model, input_size, convention=convention))
