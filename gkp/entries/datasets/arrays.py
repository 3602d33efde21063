"""In-memory datasets as uint8 arrays, the readers of the array-shaped sources, and their splits.

Every reader returns an ``Arrays`` (train may be None for evaluation-only sources) with NHWC uint8
images, int64 labels, the class count, and the normalisation statistics models should be built with;
``bundle_from_arrays`` puts them on the device as ``TensorSplit``s.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gkp.foundation.errors import ConfigError, DataError, first_line, not_a_file, relative_path_note
from gkp.foundation.files import FULL
from gkp.mechanisms.data.bundle import DataBundle, subset, training_indices
from gkp.mechanisms.data.splits import TensorSplit
from gkp.mechanisms.data.statistics import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD


@dataclass(frozen=True)
class ArraySet:
    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64


@dataclass(frozen=True)
class Arrays:
    train: ArraySet | None
    test: ArraySet
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # the augmentation this data is usually trained with


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255
    return tuple(round(float(v), 4) for v in pixels.mean(0)), tuple(round(float(v), 4) for v in pixels.std(0))


def read_cifar(name: str, root: str, download: bool) -> Arrays:
    """CIFAR-10/100 through torchvision's classes, which download and verify the archives."""
    from torchvision import datasets

    dataset_class = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    folder = Path(root) / dataset_class.base_folder
    try:
        train = dataset_class(root, train=True, download=download)
        test = dataset_class(root, train=False, download=download)
    except RuntimeError as error:
        raise DataError(
            f"{name} was not found or is corrupt in {folder}{relative_path_note(root)} ({error}). "
            "Set data.download: true "
            f"to fetch it (about 170 MB), or set data.root to the folder that holds "
            f"{dataset_class.base_folder}"
        ) from error
    except OSError as error:  # the download failed (no network, a refused or dropped connection)
        if error.errno in FULL:
            raise
        raise DataError(
            f"{name}: the download into {folder}{relative_path_note(root)} failed ({first_line(error)}); check "
            f"this machine's connection (and HTTPS_PROXY behind a proxy), or fetch {dataset_class.base_folder} "
            "on another machine and copy it into data.root"
        ) from error
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    return Arrays(
        ArraySet(train.data, np.asarray(train.targets, dtype=np.int64)),
        ArraySet(test.data, np.asarray(test.targets, dtype=np.int64)),
        len(train.classes),
        mean,
        std,
        "crop_flip",
    )


MAX_CLASSES = 100_000  # more than any image classification dataset; a larger label is a corrupt file


def read_npz_file(path: str, key: str) -> ArraySet:
    file = Path(path)
    if not file.is_file():
        raise DataError(
            f"{key}: the npz file {path} {not_a_file(path)}; it must hold 'images' "
            "(uint8, N x H x W x 3) and 'labels' (N integers)"
        )
    try:
        loaded = np.load(file, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(
                f"{key}: {file} holds one array (a .npy file), not an npz archive; write one with "
                "np.savez(path, images=..., labels=...)"
            )
        with loaded as archive:
            if "images" not in archive or "labels" not in archive:
                raise DataError(
                    f"{key}: {file} must hold arrays 'images' and 'labels', it holds "
                    f"{', '.join(archive.files) or 'nothing'}"
                )
            images, labels = archive["images"], archive["labels"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{key}: {file} is not a readable npz file ({error})") from error
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{key}: {file}: 'images' must be uint8 N x H x W x 3 (or N x H x W), got {images.dtype} {images.shape}"
        )
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise DataError(f"{key}: {file} holds no images, or images of no pixels (its 'images' are {images.shape})")
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise DataError(
            f"{key}: {file}: 'labels' must be {images.shape[0]} non-negative integers, "
            f"got {labels.dtype} {labels.shape}"
        )
    if int(labels.max()) >= MAX_CLASSES:  # before any array of that size is built
        raise DataError(
            f"{key}: {file}: its labels run up to {int(labels.max())}; classes are numbered 0..K-1 "
            f"with K at most {MAX_CLASSES:,}: relabel them"
        )
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return ArraySet(images, labels.astype(np.int64))


def read_npz(path: str | None, train_path: str | None, test_path: str | None) -> Arrays:
    """``path`` alone is an evaluation set; ``train_path`` + ``test_path`` a full dataset.

    Normalisation defaults to CIFAR-10's statistics, the usual content of such files.
    """
    test = read_npz_file(test_path or path, "data.test_path" if test_path else "data.path")
    train = read_npz_file(train_path, "data.train_path") if train_path else None
    labels = test.labels if train is None else np.concatenate([train.labels, test.labels])
    if train is not None:
        _check_classes_present(train.labels, int(labels.max()) + 1, train_path)
        if train.images.shape[1:] != test.images.shape[1:]:
            raise DataError(
                f"data.train_path: {train_path} holds {_side(train.images)} images, {test_path} "
                f"{_side(test.images)} ones; a model trains and is evaluated on images of one size"
            )
    return Arrays(train, test, int(labels.max()) + 1, CIFAR10_MEAN, CIFAR10_STD, "crop_flip")


def _side(images: np.ndarray) -> str:
    return f"{images.shape[1]} x {images.shape[2]}"


def _check_classes_present(labels: np.ndarray, num_classes: int, path: str) -> None:
    """The class count of an npz is its largest label + 1: every class below it must have training images,
    or the labels are not what they seem (a 10-class set whose labels run up to 37, say)."""
    missing = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        raise DataError(
            f"data.train_path: {path}: its labels run up to {num_classes - 1}, so the model would have "
            f"{num_classes} classes, but {len(missing)} of them have no training image ({shown}); "
            "relabel the classes 0..K-1"
        )


def read_digits() -> Arrays:
    """scikit-learn's handwritten digits (1,797 8x8 images, 10 classes), resized to 32x32x3.

    The split is fixed (stratified, 20% test, seed 0), so every run on digits sees the same test set.
    Flips would turn digits into other shapes, so the default augmentation is crops only.
    """
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    small = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)
    large = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    images = (large * 255).round().to(torch.uint8).repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0)
    train = ArraySet(images[np.sort(train_idx)], labels[np.sort(train_idx)])
    mean, std = channel_stats(train.images)
    return Arrays(train, ArraySet(images[np.sort(test_idx)], labels[np.sort(test_idx)]), 10, mean, std, "crop")


def read_synthetic(num_classes: int, image_size: int, train_size: int, test_size: int) -> Arrays:
    """A learnable synthetic set for tests and benchmarks: a faint smooth per-class pattern plus noise
    (faint, so that small adversarial perturbations matter).

    It is generated from a fixed seed, so it is the same in every process.
    """
    rng = np.random.default_rng(12345)
    coarse = rng.random((num_classes, 4, 4, 3))
    patterns = np.kron(coarse, np.ones((image_size // 4 + 1, image_size // 4 + 1, 1)))[:, :image_size, :image_size]

    def make(count: int) -> ArraySet:
        labels = rng.integers(0, num_classes, count)
        pixels = 0.5 + 0.2 * (patterns[labels] - 0.5) + 0.3 * (rng.random((count, image_size, image_size, 3)) - 0.5)
        return ArraySet((pixels * 255).round().astype(np.uint8), labels.astype(np.int64))

    train, test = make(train_size), make(test_size)
    mean, std = channel_stats(train.images)
    return Arrays(train, test, num_classes, mean, std, "none")


def _tensor_split(arrays: ArraySet, index: np.ndarray, device: torch.device, augment: str, cfg) -> TensorSplit:
    images = torch.from_numpy(np.ascontiguousarray(arrays.images[index])).permute(0, 3, 1, 2)
    labels = torch.from_numpy(arrays.labels[index]).to(device)
    return TensorSplit(images.contiguous().to(device), labels, augment, cfg.crop_padding)


def bundle_from_arrays(arrays: Arrays, cfg, device: torch.device) -> DataBundle:
    """The splits of ``arrays`` on ``device`` under a ``DataConfig`` (validation part, subsets, augmentation)."""
    augment = arrays.augment if cfg.augment == "auto" else cfg.augment
    train = val = None
    if arrays.train is not None:
        train_idx, val_idx = training_indices(len(arrays.train.labels), cfg)
        train = _tensor_split(arrays.train, train_idx, device, augment, cfg)
        # augmented only where a phase trains on it; evaluations read every split unaugmented
        val = _tensor_split(arrays.train, val_idx, device, augment, cfg) if len(val_idx) else None
    test_idx = subset(len(arrays.test.labels), cfg.test_size, cfg, "test_size")
    return DataBundle(
        train,
        val,
        _tensor_split(arrays.test, test_idx, device, "none", cfg),
        arrays.num_classes,
        arrays.test.images.shape[1],
        arrays.mean,
        arrays.std,
    )


Reader = Callable[..., Arrays]  # (DataConfig, num_classes) -> Arrays


def loader_of(read: Reader) -> Callable[..., DataBundle]:
    """A ``Dataset.load`` for array-shaped data: the reader's arrays split, subset and put on the device."""

    def load(cfg, device: torch.device, num_classes: int | None = None) -> DataBundle:
        return bundle_from_arrays(read(cfg, num_classes), cfg, device)

    return load


def reads_root(cfg, trains: bool) -> None:
    """A ``Dataset.check`` for every source but npz: it reads ``data.root`` (or nothing), never npz files."""
    if cfg.path or cfg.train_path or cfg.test_path:
        raise ConfigError(
            f"data.path: path, train_path and test_path are for data.name: npz, "
            f"not '{cfg.name}' (which reads data.root)"
        )


def sized(train: int, test: int) -> Callable[[Any], tuple[int, int]]:
    """A ``Dataset.images`` for a dataset of ``train`` + ``test`` images, as a data section subsets them."""

    def images(cfg) -> tuple[int, int]:
        kept = min(cfg.train_size or train, train)
        return round(kept * (1 - cfg.val_fraction)), min(cfg.test_size or test, test)

    return images
