"""Tiny-ImageNet and ImageNet folders under ``data.root`` (``gkp.entries.datasets.folders``)."""

from __future__ import annotations

from gkp.entries.datasets.arrays import reads_root
from gkp.entries.datasets.folders import bundle_from_folders, folder_images, manifest_digest
from gkp.foundation.contracts import Dataset

ENTRY = Dataset(
    "imagefolder",
    bundle_from_folders,
    "Tiny-ImageNet / ImageNet layout under data.root: train/<class>/, val/<class>/ (or Tiny-ImageNet's val/)",
    reads_root,
    folder_images,
    lambda cfg: manifest_digest(cfg.root),
)
