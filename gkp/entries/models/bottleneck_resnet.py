"""Bottleneck ResNets (He et al., CVPR 2016) built from torchvision's ``ResNet``: the code of the
``resnet50`` and ``resnet101`` entries.

Module names are torchvision's (``conv1 bn1 layer1..4.{i}.conv1..3 bn1..3 downsample fc``), so its
pretrained weights load directly. ``stem="small"`` replaces the 7x7 stride-2 conv and the max-pool by
a 3x3 stride-1 conv, the usual choice for 64x64 Tiny-ImageNet inputs; ``stem="imagenet"`` keeps
torchvision's stem for 224x224 inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from gkp.foundation.contracts import FilterGroup, ResidualBlock
from gkp.mechanisms.data.statistics import IMAGENET_MEAN, IMAGENET_STD
from gkp.mechanisms.layers.normalize import Normalize


def stem_for(image_size: int) -> dict[str, str]:
    """The stem for the data's image side: the small one for 64x64 (Tiny-ImageNet) and smaller."""
    return {"stem": "small" if image_size <= 64 else "imagenet"}


class BottleneckResNet(ResNet):
    def __init__(
        self,
        blocks: Sequence[int],
        num_classes: int = 1000,
        stem: Literal["imagenet", "small"] = "imagenet",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__(Bottleneck, list(blocks), num_classes=num_classes)
        if stem not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        if stem == "small":
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.maxpool = nn.Identity()
        self.normalize = Normalize(mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.normalize(x))

    def filter_pruning_groups(self) -> list[FilterGroup]:
        """The two inner convs of each bottleneck (conv1 -> conv2 and conv2 -> conv3)."""
        groups = []
        for stage in (1, 2, 3, 4):
            for i in range(len(getattr(self, f"layer{stage}"))):
                p = f"layer{stage}.{i}"
                groups.append(FilterGroup(f"{p}.conv1", f"{p}.bn1", (f"{p}.conv2",)))
                groups.append(FilterGroup(f"{p}.conv2", f"{p}.bn2", (f"{p}.conv3",)))
        return groups

    def residual_blocks(self) -> list[ResidualBlock]:
        """Every bottleneck: its branch ends with bn3, its shortcut is ``downsample`` (None: the identity)."""
        return [
            ResidualBlock(f"layer{s}.{i}", "downsample", "bn3")
            for s in (1, 2, 3, 4)
            for i in range(len(getattr(self, f"layer{s}")))
        ]

    def grouped_kernel_targets(self, scope: str = "3x3") -> list[str]:
        """Convs grouped kernel pruning prunes: each bottleneck's 3x3 conv2, or with ``scope="all"`` its
        conv1, conv2 and conv3 (the shortcut projections are never pruned)."""
        convs = ("conv2",) if scope == "3x3" else ("conv1", "conv2", "conv3")
        return [
            f"layer{s}.{i}.{c}" for s in (1, 2, 3, 4) for i in range(len(getattr(self, f"layer{s}"))) for c in convs
        ]
