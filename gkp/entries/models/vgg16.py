"""VGG-16 with BatchNorm for 32x32 inputs (Simonyan & Zisserman, ICLR 2015; the CIFAR variant of
Li et al., ICLR 2017): 13 conv-BN-ReLU layers with biases, four 2x2 max-pools, a global average pool and
one linear classifier (14.73M parameters at 10 classes, as in the SR-GKP paper's Table 12).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gkp.foundation.contracts import ArchEntry, FilterGroup
from gkp.mechanisms.data.statistics import CIFAR10_MEAN, CIFAR10_STD
from gkp.mechanisms.layers.normalize import Normalize

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGG(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        layout: Sequence[int | str] = VGG16_LAYOUT,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ):
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        in_channels = 3
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [
                nn.Conv2d(in_channels, int(item), 3, padding=1),
                nn.BatchNorm2d(int(item)),
                nn.ReLU(inplace=True),
            ]
            in_channels = int(item)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(self.normalize(x)))
        return self.classifier(torch.flatten(x, 1))

    def filter_pruning_groups(self) -> list[FilterGroup]:
        """Every conv's filters, its BatchNorm, and the next conv's inputs (the classifier's after the last)."""
        convs = [i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        groups = []
        for position, index in enumerate(convs):
            consumer = f"features.{convs[position + 1]}" if position + 1 < len(convs) else "classifier"
            groups.append(FilterGroup(f"features.{index}", f"features.{index + 1}", (consumer,)))
        return groups

    def grouped_kernel_targets(self, scope: str = "3x3") -> list[str]:
        """Convs grouped kernel pruning prunes: every conv but the first (whose 3 inputs are the image)."""
        return [f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)][1:]


ENTRY = ArchEntry("vgg16", VGG, 32, "VGG-16 with BatchNorm for 32x32 inputs")
