"""Splits: the objects the engine iterates, yielding (images in [0, 1], labels) batches on the device.

``TensorSplit`` keeps a whole uint8 dataset on the device and augments there (CIFAR, digits, npz,
synthetic); ``FolderSplit`` streams an image folder through torchvision transforms in worker processes
(Tiny-ImageNet, ImageNet). Training batches are shuffled and augmented from a per-epoch seed, so an
interrupted run resumed at epoch e sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from gkp.data.augment import augment

Batch = tuple[torch.Tensor, torch.Tensor]


class TensorSplit:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment_kind: str = "none"):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        self.images = images.contiguous()
        self.labels = labels.long()
        self.augment_kind = augment_kind

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def num_batches(self, batch_size: int, train: bool) -> int:
        return len(self._batch_sizes(batch_size, train))

    def _batch_sizes(self, batch_size: int, train: bool) -> list[int]:
        sizes = [min(batch_size, self.num_samples - start) for start in range(0, self.num_samples, batch_size)]
        # A single-image batch cannot be trained through BatchNorm: drop it from training epochs.
        return sizes[:-1] if train and len(sizes) > 1 and sizes[-1] == 1 else sizes

    def batches(self, batch_size: int, *, train: bool = False, seed: int | None = None) -> Iterator[Batch]:
        device = self.images.device
        order = torch.arange(self.num_samples, device=device)
        generator = None
        if train:
            generator = torch.Generator(device=device)
            generator.manual_seed(0 if seed is None else seed)
            order = torch.randperm(self.num_samples, generator=generator, device=device)
        start = 0
        for size in self._batch_sizes(batch_size, train):
            index = order[start : start + size]
            start += size
            images = self.images.index_select(0, index)
            if train and self.augment_kind != "none":
                images = augment(images, self.augment_kind, generator)
            yield images.float().div_(255), self.labels.index_select(0, index)

    def take(self, index: torch.Tensor, batch_size: int) -> list[Batch]:
        """The samples at ``index``, in that order, unaugmented, in batches."""
        index = index.to(self.images.device)
        return [
            (self.images.index_select(0, part).float().div_(255), self.labels.index_select(0, part))
            for part in index.split(batch_size)
        ]


class FolderSplit:
    """A torchvision-style dataset of (float image tensor in [0, 1], label) read by a DataLoader."""

    def __init__(self, dataset: Dataset, device: torch.device, num_workers: int):
        self.dataset = dataset
        self.device = device
        self.num_workers = num_workers

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def num_batches(self, batch_size: int, train: bool) -> int:
        full, rest = divmod(self.num_samples, batch_size)
        return full + (rest > 1 or (rest == 1 and not train))

    def batches(self, batch_size: int, *, train: bool = False, seed: int | None = None) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
        drop_single = train and self.num_samples % batch_size == 1
        loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            shuffle=train,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=drop_single,
        )
        for images, labels in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def take(self, index: torch.Tensor, batch_size: int) -> list[Batch]:
        """The samples at ``index``, in that order, through the split's transforms, in batches."""
        loader = DataLoader(Subset(self.dataset, index.tolist()), batch_size=batch_size, num_workers=self.num_workers)
        return [(images.to(self.device), labels.to(self.device)) for images, labels in loader]


def calibration_batches(split, batches: int, batch_size: int, seed: int) -> list[Batch]:
    """``batches`` batches of distinct training samples drawn with ``seed`` (all samples if fewer)."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(split.num_samples, generator=generator)[: batches * batch_size]
    return split.take(index, batch_size)
