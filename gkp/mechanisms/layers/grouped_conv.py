"""The grouped convolution a grouped-kernel-pruned conv becomes (Zhong et al., ICLR 2022 / NeurIPS 2023).

A conv whose filters form ``groups`` equal groups, group g keeping the kernels of input channels
``kept[g]`` only, holds exactly those kernels: a weight of shape (C_out, keep, k, k), rows in grouped
filter order. It computes the same function in one of three forms, chosen per layer and device by
timing (``gkp.mechanisms.layers.forms.choose_forms``), since which is fastest depends on the layer's shape, the
batch and the hardware:

- ``grouped``: gather the input channels ``kept[0] + kept[1] + ...`` (a channel may be gathered by
  several groups), one ``conv2d(groups=groups)``, then put the outputs back in filter order;
- ``per_group``: one dense conv per group on its own gathered channels, outputs concatenated and put
  back in filter order;
- ``dense``: scatter the kept kernels into a zero (C_out, C_in, k, k) weight in the original order and
  run one ordinary conv (no gathers, but the full dense MACs).

The index tensors are buffers, so ``.to()``, ``state_dict()`` and checkpoints carry them; the form is a
runtime choice and is not saved. Parameters and counted MACs are those of the kept kernels. When the
layers after the conv can take its outputs in grouped order (a BatchNorm then convs, see
``gkp.mechanisms.pruning.surgery.fold_output_orders``), ``restore`` is None and the outputs stay in grouped order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FORMS = ("grouped", "per_group", "dense")


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
        self.form = "grouped"
        self._dense_cache: tuple[tuple, torch.Tensor] | None = None
        self.weight = nn.Parameter(torch.empty(out_channels, keep, *self.kernel_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_channels, device=device, dtype=dtype)) if bias else None
        self.register_buffer("gather", torch.zeros(groups * keep, dtype=torch.long, device=device))
        self.register_buffer("restore", torch.arange(out_channels, device=device))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, filter_order: list[int], kept: list[list[int]]) -> GroupedKernelConv2d:
        """The grouped conv holding ``conv``'s kept kernels (group g: filters ``filter_order[g*d:(g+1)*d]``,
        input channels ``kept[g]``), on ``conv``'s device."""
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

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(x.index_select(1, self.gather), self.weight, self.bias, self.groups)

    def _per_group(self, x: torch.Tensor) -> torch.Tensor:
        rows, inputs = self.out_channels // self.groups, self.keep
        biases = [None] * self.groups if self.bias is None else self.bias.split(rows)
        outputs = [
            self._conv(
                x.index_select(1, self.gather[g * inputs : (g + 1) * inputs]),
                self.weight[g * rows : (g + 1) * rows],
                biases[g],
                1,
            )
            for g in range(self.groups)
        ]
        return torch.cat(outputs, dim=1)

    def dense_weight(self) -> torch.Tensor:
        """The equivalent (C_out, C_in, k, k) weight, zeros elsewhere; rows in the output order."""
        rows = torch.arange(self.out_channels, device=self.weight.device)
        if self.restore is not None:  # output row of grouped position q: the original filter argsort(restore)[q]
            rows = torch.argsort(self.restore)
        dense = self.weight.new_zeros(self.out_channels, self.in_channels, *self.kernel_size)
        columns = self.gather.view(self.groups, self.keep).repeat_interleave(self.out_channels // self.groups, 0)
        return dense.index_put(
            (rows.repeat_interleave(self.keep), columns.reshape(-1)), self.weight.reshape(-1, *self.kernel_size)
        )

    def _inference_dense_weight(self) -> torch.Tensor:
        """``dense_weight()``, kept between calls while the weight needs no gradient (none is recorded, or it is
        frozen, as in an attacked evaluation) and is unchanged."""
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return self.dense_weight()
        key = (self.weight.data_ptr(), self.weight._version, self.gather._version)
        if self._dense_cache is None or self._dense_cache[0] != key:
            layout = torch.channels_last if self.weight.is_contiguous(memory_format=torch.channels_last) else None
            dense = self.dense_weight()
            self._dense_cache = (key, dense.contiguous(memory_format=layout) if layout else dense)
        return self._dense_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "dense":
            bias = self.bias
            if bias is not None and self.restore is not None:
                bias = bias.index_select(0, self.restore)
            return self._conv(x, self._inference_dense_weight(), bias, 1)
        y = self._per_group(x) if self.form == "per_group" else self._grouped(x)
        return y if self.restore is None else y.index_select(1, self.restore)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, groups={self.groups}, "
            f"keep={self.keep}, stride={self.stride}, padding={self.padding}, form={self.form}"
        )
