"""Datasets as the engine sees them: a ``DataBundle`` of train / val / test splits on the device, and the
seeded subsets and validation fraction a ``data`` section asks for.

The sources (CIFAR-10/100, image folders, npz files, scikit-learn's digits, synthetic data) are
``gkp.foundation.contracts.Dataset`` entries in ``gkp/entries/datasets/``; ``gkp.application.catalog.load_data``
loads the one a config names. ``data.val_fraction`` holds out a seeded part of the training set (for
``select_on: val``, and for phases that train on it); ``train_size`` / ``test_size`` take seeded subsets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from gkp.mechanisms.data.splits import FolderSplit, TensorSplit

log = logging.getLogger(__name__)

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


def subset(count: int, size: int | None, cfg, key: str) -> np.ndarray:
    """The indices ``data.<key>`` (``train_size`` / ``test_size``) keeps of ``count`` under a ``DataConfig``:
    a seeded random subset, or the first ``size`` (``data.subset: first``); all of them, with a warning,
    where it asks for more than there are."""
    if size is not None and size > count:
        log.warning("data.%s: %d asked, but there are %d; all %d are used", key, size, count, count)
    if cfg.subset == "first":
        return np.arange(min(size, count) if size is not None else count)
    return seeded_subset(count, size, cfg.split_seed)


def hold_out(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): a seeded ``fraction`` of ``count`` held out, both sorted."""
    if fraction <= 0:
        return np.arange(count), np.arange(0)
    order = np.random.default_rng(seed).permutation(count)
    held = max(1, round(fraction * count))
    return np.sort(order[held:]), np.sort(order[:held])


def training_indices(count: int, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) of a training set of ``count`` under a ``DataConfig``: the
    validation part held out first, then the ``train_size`` subset of the rest."""
    train_idx, val_idx = hold_out(count, cfg.val_fraction, cfg.split_seed)
    return train_idx[subset(len(train_idx), cfg.train_size, cfg, "train_size")], val_idx
