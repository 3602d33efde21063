"""The grouped convolution a grouped-kernel-pruned conv becomes (Zhong et al., ICLR 2022 / NeurIPS 2023).

A conv whose filters form ``groups`` equal groups, group g keeping the kernels of input channels
``kept[g]`` only, is computed as: gather the input channels ``kept[0] + kept[1] + ...`` (a channel may
be gathered by several groups), run ``Conv2d(groups * keep, C_out, groups=groups)``, and put the output
channels back in the original filter order. The index tensors are buffers, so ``.to()``,
``state_dict()`` and checkpoints carry them. Its parameters and MACs are exactly those of the kept
kernels: ``C_out * keep * k * k`` weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupedKernelConv2d(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        *,
        groups: int,
        keep: int,
        stride=1,
        padding=0,
        dilation=1,
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if out_channels % groups:
            raise ValueError(f"{groups} groups do not divide {out_channels} output channels")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, tuple(kernel_size)
        self.groups, self.keep = groups, keep
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, keep, *self.kernel_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_channels, device=device, dtype=dtype)) if bias else None
        self.register_buffer("gather", torch.zeros(groups * keep, dtype=torch.long, device=device))
        self.register_buffer("restore", torch.arange(out_channels, device=device))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, filter_order: list[int], kept: list[list[int]]) -> GroupedKernelConv2d:
        """The grouped conv holding ``conv``'s kept kernels (group g: filters ``filter_order[g*d:(g+1)*d]``,
        input channels ``kept[g]``); the weight, bias and index buffers are copied from ``conv``'s device."""
        weight = conv.weight.detach()
        device = weight.device
        groups, keep = len(kept), len(kept[0])
        grouped = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            groups=groups,
            keep=keep,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            bias=conv.bias is not None,
            device=device,
            dtype=weight.dtype,
        )
        order = torch.tensor(filter_order, dtype=torch.long, device=device)
        per_group = conv.out_channels // groups
        blocks = [
            weight[order[g * per_group : (g + 1) * per_group]][:, torch.tensor(k, device=device)]
            for g, k in enumerate(kept)
        ]
        with torch.no_grad():
            grouped.weight.copy_(torch.cat(blocks))
            if conv.bias is not None:
                grouped.bias.copy_(conv.bias.detach()[order])
            grouped.gather.copy_(torch.tensor([j for k in kept for j in k], device=device))
            grouped.restore.copy_(torch.argsort(order))
        return grouped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(
            x.index_select(1, self.gather),
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )
        return y.index_select(1, self.restore)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, groups={self.groups}, "
            f"keep={self.keep}, stride={self.stride}, padding={self.padding}"
        )
