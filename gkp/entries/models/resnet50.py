"""ResNet-50, torchvision's bottleneck ResNet (3, 4, 6, 3 blocks per stage), for ImageNet and,
with the small stem, Tiny-ImageNet (``gkp.entries.models.bottleneck_resnet``)."""

from __future__ import annotations

from functools import partial

from gkp.entries.models.bottleneck_resnet import BottleneckResNet, stem_for
from gkp.foundation.contracts import ArchEntry

ENTRY = ArchEntry(
    "resnet50", partial(BottleneckResNet, (3, 4, 6, 3)), 224, "bottleneck ResNet-50 (torchvision)", stem_for
)
