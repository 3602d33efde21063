"""CIFAR ResNets (He et al., CVPR 2016, section 4.2): depth 6n+2, three stages of n basic blocks.

Shortcuts are option A: identity, or, where a block halves the resolution and doubles the width,
a stride-2 subsample followed by zero channels appended after the input's channels. That is exactly
the authors' ``DownsampleA`` (``AvgPool2d(kernel_size=1, stride=2)`` then concatenation with zeros),
so their released checkpoints load into this network unchanged. Module names follow the usual
convention: ``conv1 bn1 layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2} fc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from gkp.foundation.contracts import ArchEntry, FilterGroup, ResidualBlock
from gkp.mechanisms.data.statistics import CIFAR10_MEAN, CIFAR10_STD
from gkp.mechanisms.layers.normalize import Normalize


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and append ``out_planes - in_planes`` zero channels."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.extra_channels = out_planes - in_planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def pooled_reads(self, inputs: torch.Tensor, output: torch.Tensor) -> int:
        """The authors' ``AvgPool2d(kernel_size=1, stride=2)``: it reads the subsampled input, before the
        zero channels (``gkp.foundation.contracts.CountedAsPooling``)."""
        return inputs.shape[1] * output.shape[-2] * output.shape[-1]


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = ZeroPadShortcut(in_planes, planes, stride) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        width: int = 16,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 20, 32, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.normalize = Normalize(mean, std)
        self.conv1 = conv3x3(3, width)
        self.bn1 = nn.BatchNorm2d(width)
        widths = (width, 2 * width, 4 * width)
        in_planes = width
        for stage, planes in enumerate(widths, start=1):
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if stage > 1 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def filter_pruning_groups(self) -> list[FilterGroup]:
        """The inner channels of each basic block: conv1's filters, bn1, conv2's input channels."""
        groups = []
        for stage in (1, 2, 3):
            for i in range(len(getattr(self, f"layer{stage}"))):
                prefix = f"layer{stage}.{i}"
                groups.append(FilterGroup(f"{prefix}.conv1", f"{prefix}.bn1", (f"{prefix}.conv2",)))
        return groups

    def residual_blocks(self) -> list[ResidualBlock]:
        """Every basic block: its branch ends with bn2, its shortcut is the identity or the zero-pad one."""
        return [
            ResidualBlock(f"layer{s}.{i}", "shortcut", "bn2")
            for s in (1, 2, 3)
            for i in range(len(getattr(self, f"layer{s}")))
        ]

    def grouped_kernel_targets(self, scope: str = "3x3") -> list[str]:
        """Convs grouped kernel pruning prunes: both 3x3 convs of every basic block."""
        return [
            f"layer{s}.{i}.conv{c}" for s in (1, 2, 3) for i in range(len(getattr(self, f"layer{s}"))) for c in (1, 2)
        ]


def _entry(depth: int, note: str = "option-A shortcuts") -> ArchEntry:
    return ArchEntry(f"resnet{depth}", partial(CifarResNet, depth), 32, f"CIFAR ResNet-{depth}, {note}")


ENTRIES = (_entry(8, "one block per stage, for smoke tests"), *(_entry(depth) for depth in (20, 32, 44, 56, 110)))
