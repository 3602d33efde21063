"""The datasets a config can name (``data.name``), each a ``gkp.foundation.contracts.Dataset``: how to load it and
what its ``data`` section must hold. Registered in ``gkp.application.catalog.DATASETS``.

- ``cifar10``, ``cifar100``: torchvision's classes, which download (``data.download: true``) and verify.
- ``imagefolder``: Tiny-ImageNet / ImageNet folders under ``data.root`` (``gkp.entries.datasets.folders``).
- ``npz``: files of ``images`` (uint8 N x H x W x 3) and ``labels``: ``data.path`` for evaluation only,
  or ``data.train_path`` and ``data.test_path``.
- ``digits``: the handwritten digits that ship inside scikit-learn, resized to 32x32: runs anywhere with
  no download.
- ``synthetic``: generated, learnable images for tests and benchmarks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gkp.entries.datasets.arrays import Arrays, bundle_from_arrays, read_cifar, read_digits, read_npz, read_synthetic
from gkp.entries.datasets.folders import bundle_from_folders
from gkp.foundation.contracts import Dataset
from gkp.foundation.errors import ConfigError
from gkp.mechanisms.data.bundle import DataBundle

Reader = Callable[..., Arrays]  # (DataConfig, num_classes) -> Arrays


def _from_arrays(read: Reader) -> Callable[..., DataBundle]:
    def load(cfg, device: torch.device, num_classes: int | None = None) -> DataBundle:
        return bundle_from_arrays(read(cfg, num_classes), cfg, device)

    return load


def _reads_root(cfg, trains: bool) -> None:
    """Every source but npz reads ``data.root`` (or nothing), never npz files."""
    if cfg.path or cfg.train_path or cfg.test_path:
        raise ConfigError(
            f"data.path: path, train_path and test_path are for data.name: npz, "
            f"not '{cfg.name}' (which reads data.root)"
        )


def _npz_paths(cfg, trains: bool) -> None:
    if not (cfg.path or (cfg.train_path and cfg.test_path)):
        raise ConfigError(
            "data.path: an npz dataset needs data.path (evaluation only) or both data.train_path and data.test_path"
        )
    if trains and not cfg.train_path:
        raise ConfigError(
            "data.train_path: the train/finetune stages need an npz training file; "
            "data.path is used for evaluation only"
        )


def _sized(train: int, test: int) -> Callable[[Any], tuple[int, int]]:
    """The image counts of a dataset of ``train`` + ``test`` images, as a data section subsets them."""

    def images(cfg) -> tuple[int, int]:
        kept = min(cfg.train_size or train, train)
        return round(kept * (1 - cfg.val_fraction)), min(cfg.test_size or test, test)

    return images


# What image folders usually hold at their image size, for estimates before the folders exist here:
# Tiny-ImageNet (64x64: 100,000 + 10,000) and ImageNet-1k (224x224: 1,281,167 + 50,000).
USUAL_FOLDER_IMAGES = {64: (100_000, 10_000), 224: (1_281_167, 50_000)}


def _folder_images(cfg) -> tuple[int, int] | None:
    """Counted from the folders where they exist, else what the usual dataset of that image size holds."""
    root = Path(cfg.root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, test = (sum(len(files) for _, _, files in os.walk(root / part)) for part in ("train", "val"))
        return _sized(train, test)(cfg)
    usual = USUAL_FOLDER_IMAGES.get(cfg.image_size or 224)
    return _sized(*usual)(cfg) if usual else None


CIFAR10 = Dataset(
    "cifar10",
    _from_arrays(lambda cfg, classes: read_cifar("cifar10", cfg.root, cfg.download)),
    "CIFAR-10 (50,000 + 10,000 32x32 images, 10 classes) under data.root; data.download fetches it",
    _reads_root,
    _sized(50_000, 10_000),
)
CIFAR100 = Dataset(
    "cifar100",
    _from_arrays(lambda cfg, classes: read_cifar("cifar100", cfg.root, cfg.download)),
    "CIFAR-100 (50,000 + 10,000 32x32 images, 100 classes) under data.root; data.download fetches it",
    _reads_root,
    _sized(50_000, 10_000),
)
IMAGEFOLDER = Dataset(
    "imagefolder",
    bundle_from_folders,
    "Tiny-ImageNet / ImageNet layout under data.root: train/<class>/, val/<class>/ (or Tiny-ImageNet's val/)",
    _reads_root,
    _folder_images,
)
NPZ = Dataset(
    "npz",
    _from_arrays(lambda cfg, classes: read_npz(cfg.path, cfg.train_path, cfg.test_path)),
    "npz files of uint8 images (N x H x W x 3) and labels: data.path, or data.train_path + data.test_path",
    _npz_paths,
)
DIGITS = Dataset(
    "digits",
    _from_arrays(lambda cfg, classes: read_digits()),
    "scikit-learn's handwritten digits (1,797 images, 10 classes) at 32x32: no download",
    _reads_root,
    _sized(1437, 360),  # read_digits' fixed split
)
SYNTHETIC = Dataset(
    "synthetic",
    _from_arrays(
        lambda cfg, classes: read_synthetic(
            classes or 10, cfg.image_size or 32, cfg.train_size or 512, cfg.test_size or 256
        )
    ),
    "generated, learnable images for tests and benchmarks (data.image_size, train_size, test_size)",
    _reads_root,
    lambda cfg: (round((cfg.train_size or 512) * (1 - cfg.val_fraction)), cfg.test_size or 256),
)
