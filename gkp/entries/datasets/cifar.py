"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009): torchvision's classes read the files under ``data.root``, and
download and verify them with ``data.download: true``."""

from __future__ import annotations

from gkp.entries.datasets.arrays import loader_of, read_cifar, reads_root, sized
from gkp.foundation.contracts import Dataset

ENTRIES = tuple(
    Dataset(
        name,
        loader_of(lambda cfg, classes, name=name: read_cifar(name, cfg.root, cfg.download)),
        f"CIFAR-{classes} (50,000 + 10,000 32x32 images, {classes} classes) under data.root; data.download fetches it",
        reads_root,
        sized(50_000, 10_000),
    )
    for name, classes in (("cifar10", 10), ("cifar100", 100))
)
