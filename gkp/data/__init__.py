"""Datasets by name: ``load_data(cfg, device)`` returns the train / val / test splits on the device.

Sources: ``cifar10`` and ``cifar100`` (torchvision downloads and checksums), ``imagefolder``
(Tiny-ImageNet / ImageNet layout), ``npz`` (uint8 NHWC ``images`` + ``labels``), ``digits``
(scikit-learn's, embedded: runs anywhere with no download) and ``synthetic`` (for tests and benchmarks).
``data.val_fraction`` holds out a seeded part of the training set for ``select_on: val``;
``train_size`` / ``test_size`` take seeded subsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Subset

from gkp.data.arrays import Arrays, ArraySet, read_cifar, read_digits, read_npz, read_synthetic
from gkp.data.folders import read_image_folders, transforms_for
from gkp.data.splits import FolderSplit, TensorSplit
from gkp.models.imagenet_resnet import IMAGENET_MEAN, IMAGENET_STD

Split = TensorSplit | FolderSplit


@dataclass
class DataBundle:
    train: Split | None
    val: Split | None
    test: Split
    num_classes: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def seeded_subset(count: int, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``size`` out of ``count`` (all when size is None)."""
    if size is None or size >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).permutation(count)[:size])


def hold_out(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): a seeded ``fraction`` of ``count`` held out, both sorted."""
    if fraction <= 0:
        return np.arange(count), np.arange(0)
    order = np.random.default_rng(seed).permutation(count)
    held = max(1, round(fraction * count))
    return np.sort(order[held:]), np.sort(order[:held])


def _tensor_split(arrays: ArraySet, index: np.ndarray, device: torch.device, augment: str) -> TensorSplit:
    images = torch.from_numpy(np.ascontiguousarray(arrays.images[index])).permute(0, 3, 1, 2)
    return TensorSplit(images.contiguous().to(device), torch.from_numpy(arrays.labels[index]).to(device), augment)


def _read_arrays(cfg, num_classes: int | None) -> Arrays:
    if cfg.name in ("cifar10", "cifar100"):
        return read_cifar(cfg.name, cfg.root, cfg.download)
    if cfg.name == "npz":
        return read_npz(cfg.path, cfg.train_path, cfg.test_path)
    if cfg.name == "digits":
        return read_digits()
    return read_synthetic(num_classes or 10, cfg.image_size or 32, cfg.train_size or 512, cfg.test_size or 256)


def _from_arrays(cfg, device: torch.device, num_classes: int | None) -> DataBundle:
    arrays = _read_arrays(cfg, num_classes)
    augment = arrays.augment if cfg.augment == "auto" else cfg.augment
    train = val = None
    if arrays.train is not None:
        train_idx, val_idx = hold_out(len(arrays.train.labels), cfg.val_fraction, cfg.split_seed)
        train_idx = train_idx[seeded_subset(len(train_idx), cfg.train_size, cfg.split_seed)]
        train = _tensor_split(arrays.train, train_idx, device, augment)
        val = _tensor_split(arrays.train, val_idx, device, "none") if len(val_idx) else None
    test_idx = seeded_subset(len(arrays.test.labels), cfg.test_size, cfg.split_seed)
    return DataBundle(
        train,
        val,
        _tensor_split(arrays.test, test_idx, device, "none"),
        arrays.num_classes,
        arrays.test.images.shape[1],
        arrays.mean,
        arrays.std,
    )


def _from_folders(cfg, device: torch.device) -> DataBundle:
    size = cfg.image_size or 224
    train_set, test_set, num_classes = read_image_folders(cfg.root, size)
    train_idx, val_idx = hold_out(len(train_set), cfg.val_fraction, cfg.split_seed)
    train_idx = train_idx[seeded_subset(len(train_idx), cfg.train_size, cfg.split_seed)]
    test_idx = seeded_subset(len(test_set), cfg.test_size, cfg.split_seed)
    val = None
    if len(val_idx):
        plain = type(train_set)(train_set.root, transform=transforms_for(size, train=False))
        val = FolderSplit(Subset(plain, val_idx.tolist()), device, cfg.num_workers)
    return DataBundle(
        FolderSplit(Subset(train_set, train_idx.tolist()), device, cfg.num_workers),
        val,
        FolderSplit(Subset(test_set, test_idx.tolist()), device, cfg.num_workers),
        num_classes,
        size,
        IMAGENET_MEAN,
        IMAGENET_STD,
    )


def load_data(cfg, device: torch.device, num_classes: int | None = None) -> DataBundle:
    """The splits of ``cfg`` (a ``DataConfig``) on ``device``; ``num_classes`` sizes synthetic data."""
    bundle = _from_folders(cfg, device) if cfg.name == "imagefolder" else _from_arrays(cfg, device, num_classes)
    if cfg.mean is not None:
        bundle.mean, bundle.std = tuple(cfg.mean), tuple(cfg.std)
    return bundle
