"""The layers of plans that change a network's structure beyond keeping channels, each built from the dense
layer it replaces (``gkp.mechanisms.pruning.surgery``) so that a plan alone rebuilds the pruned model:

- ``RemovedBlock``: a residual block whose branch is gone; it computes ``relu(shortcut(x))``, what the block
  computes once its branch outputs zero (GAL's removed blocks). A removed stage-entry block keeps its
  shortcut (the option-A zero-pad subsampling, or a projection).
- ``FactorisedConv2d``: a conv that reads only ``keep_in`` of its input channels, as a ``rank``-channel k x k
  conv then a 1x1 conv, the truncated SVD of the input-pruned weight, or without a rank as the input-pruned
  conv alone (CC's compressed convs).
- ``AdaptedConv2d``: a conv between two 1x1 convs, ``pre`` (input channels -> the core's) and ``post`` (the
  core's -> output channels); from a dense conv they select ``keep_in`` and place ``keep_out`` (LRF's
  adapters, which its training then moves away from selections).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RemovedBlock(nn.Module):
    """A residual block without its branch: ``relu(shortcut(x))``."""

    def __init__(self, shortcut: nn.Module):
        super().__init__()
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x))


def _conv_like(conv: nn.Conv2d, in_channels: int, out_channels: int, *, pointwise: bool, bias: bool) -> nn.Conv2d:
    """A conv on ``conv``'s device and dtype: 1x1 (``pointwise``) or with ``conv``'s kernel and geometry."""
    geometry = {} if pointwise else {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
    kernel = 1 if pointwise else conv.kernel_size
    return nn.Conv2d(
        in_channels, out_channels, kernel, bias=bias, device=conv.weight.device, dtype=conv.weight.dtype, **geometry
    )


class FactorisedConv2d(nn.Module):
    """``expand(reduce(x[:, keep_in]))``: ``reduce`` a k x k conv to ``rank`` channels, ``expand`` a 1x1 conv;
    without a rank, ``reduce`` is the input-pruned conv itself and ``expand`` the identity."""

    def __init__(self, keep_in: torch.Tensor, reduce: nn.Conv2d, expand: nn.Module):
        super().__init__()
        self.register_buffer("keep_in", keep_in.long())
        self.reduce, self.expand = reduce, expand

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, keep_in: list[int], rank: int | None) -> FactorisedConv2d:
        """The truncated SVD (float64) U S V^T of ``conv``'s weight restricted to ``keep_in``, split as CC's
        code splits it: ``reduce`` holds sqrt(S) V^T of the top ``rank`` singular values, ``expand`` U sqrt(S)
        and the conv's bias. Without a rank, ``reduce`` holds the restricted weight and the bias."""
        index = torch.tensor(keep_in, dtype=torch.long, device=conv.weight.device)
        weight = conv.weight.detach().index_select(1, index)
        if rank is None:
            reduce = _conv_like(conv, len(keep_in), conv.out_channels, pointwise=False, bias=conv.bias is not None)
            with torch.no_grad():
                reduce.weight.copy_(weight)
                if conv.bias is not None:
                    reduce.bias.copy_(conv.bias.detach())
            return cls(index, reduce, nn.Identity())
        u, s, vh = torch.linalg.svd(weight.double().flatten(1), full_matrices=False)
        root = s[:rank].sqrt()
        reduce = _conv_like(conv, len(keep_in), rank, pointwise=False, bias=False)
        expand = _conv_like(conv, rank, conv.out_channels, pointwise=True, bias=conv.bias is not None)
        with torch.no_grad():
            reduce.weight.copy_((root[:, None] * vh[:rank]).view(rank, *weight.shape[1:]))
            expand.weight.copy_((u[:, :rank] * root).view(conv.out_channels, rank, 1, 1))
            if conv.bias is not None:
                expand.bias.copy_(conv.bias.detach())
        return cls(index, reduce, expand)

    def dense_weight(self) -> torch.Tensor:
        """The weight of the one conv this computes, over ``keep_in``: expand x reduce."""
        if isinstance(self.expand, nn.Identity):
            return self.reduce.weight
        return torch.einsum("or,rikl->oikl", self.expand.weight[:, :, 0, 0], self.reduce.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x.index_select(1, self.keep_in)))


class AdaptedConv2d(nn.Module):
    """``post(conv(pre(x)))``: ``pre`` and ``post`` are 1x1 convs, ``conv`` the adapted k x k conv."""

    def __init__(self, pre: nn.Conv2d, conv: nn.Conv2d, post: nn.Conv2d):
        super().__init__()
        self.pre, self.conv, self.post = pre, conv, post

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, keep_in: list[int], keep_out: list[int]) -> AdaptedConv2d:
        """``pre`` selects ``keep_in``, ``conv`` holds the dense weights of ``keep_out`` x ``keep_in``, ``post``
        puts its outputs back at ``keep_out`` and adds the dense bias: the dense conv with the other weights
        zeroed (identity adapters, all kept: the dense conv itself)."""
        device = conv.weight.device
        rows, columns = (torch.tensor(k, dtype=torch.long, device=device) for k in (keep_out, keep_in))
        pre = _conv_like(conv, conv.in_channels, len(keep_in), pointwise=True, bias=False)
        core = _conv_like(conv, len(keep_in), len(keep_out), pointwise=False, bias=False)
        post = _conv_like(conv, len(keep_out), conv.out_channels, pointwise=True, bias=conv.bias is not None)
        with torch.no_grad():
            pre.weight.zero_()[torch.arange(len(keep_in), device=device), columns] = 1
            core.weight.copy_(conv.weight.detach().index_select(0, rows).index_select(1, columns))
            post.weight.zero_()[rows, torch.arange(len(keep_out), device=device)] = 1
            if conv.bias is not None:
                post.bias.copy_(conv.bias.detach())
        return cls(pre, core, post)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.conv(self.pre(x)))
