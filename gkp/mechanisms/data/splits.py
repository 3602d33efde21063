"""Splits: the objects the engine iterates, yielding (images in [0, 1], labels) batches on the device.

``TensorSplit`` keeps a whole uint8 dataset on the device and augments there (CIFAR, digits, npz,
synthetic); ``FolderSplit`` streams an image folder through torchvision transforms in worker processes
(Tiny-ImageNet, ImageNet). Training batches are shuffled and augmented from a per-epoch seed, so an
interrupted run resumed at epoch e sees exactly the batches it would have seen.

In a run of several processes (``gkp.mechanisms.engine.distributed``) each one iterates its ``Shard``: its part of
every training batch (the batches themselves are those of one process), and every size-th test batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Subset

from gkp.foundation.errors import DataError
from gkp.mechanisms.data.augment import augment

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Shard:
    """A process's share of the work in a run of ``size`` processes: process ``rank`` (0-based)."""

    rank: int = 0
    size: int = 1

    def part(self, count: int) -> slice:
        """Its contiguous part of ``count`` items (the first ``count % size`` parts one item longer)."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def owns(self, batch_index: int) -> bool:
        return batch_index % self.size == self.rank

    @property
    def smallest_training_batch(self) -> int:
        """A last training batch smaller than this is dropped: BatchNorm cannot train on one image, and
        every process needs at least that many of each batch."""
        return 2 * self.size


WHOLE = Shard()


class TensorSplit:
    """A whole split as uint8 tensors on the device; training batches are augmented with ``augment_kind``
    (crops padded by ``crop_padding``, default a side/8 border), evaluation batches never."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, augment_kind: str = "none", crop_padding: int | None = None
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        self.images = images.contiguous()
        self.labels = labels.long()
        self.augment_kind = augment_kind
        self.crop_padding = crop_padding

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def num_batches(self, batch_size: int, train: bool, shard: Shard = WHOLE) -> int:
        return len(self._batch_sizes(batch_size, train, shard))

    def _batch_sizes(self, batch_size: int, train: bool, shard: Shard = WHOLE) -> list[int]:
        sizes = [min(batch_size, self.num_samples - start) for start in range(0, self.num_samples, batch_size)]
        too_small = train and len(sizes) > 1 and sizes[-1] < shard.smallest_training_batch
        return sizes[:-1] if too_small else sizes

    def batches(
        self, batch_size: int, *, train: bool = False, seed: int | None = None, shard: Shard = WHOLE
    ) -> Iterator[Batch]:
        """The batches of an epoch (``train``: shuffled and augmented from ``seed``; ``shard``'s part of
        each), or of an evaluation (in order, whole)."""
        device = self.images.device
        order = torch.arange(self.num_samples, device=device)
        generator = None
        if train:
            generator = torch.Generator(device=device)
            generator.manual_seed(0 if seed is None else seed)
            order = torch.randperm(self.num_samples, generator=generator, device=device)
        start = 0
        for size in self._batch_sizes(batch_size, train, shard):
            index = order[start : start + size]
            start += size
            images = self.images.index_select(0, index)
            if train and self.augment_kind != "none":  # the whole batch, so that its random draws are one process's
                images = augment(images, self.augment_kind, generator, self.crop_padding)
            part = shard.part(size) if train else slice(None)
            yield images[part].float().div_(255), self.labels.index_select(0, index)[part]

    def test_batches(self, batch_size: int, shard: Shard = WHOLE) -> Iterator[tuple[int, Batch]]:
        """(index, batch) of the evaluation's batches in order, those ``shard`` owns."""
        for index, start in enumerate(range(0, self.num_samples, batch_size)):
            if shard.owns(index):
                part = torch.arange(start, min(start + batch_size, self.num_samples), device=self.images.device)
                yield index, (self.images.index_select(0, part).float().div_(255), self.labels.index_select(0, part))

    def with_crop_padding(self, crop_padding: int) -> TensorSplit:
        """The same split (its tensors shared) whose training crops are padded by ``crop_padding``."""
        padded = copy.copy(self)
        padded.crop_padding = crop_padding
        return padded

    def take(self, index: torch.Tensor, batch_size: int) -> list[Batch]:
        """The samples at ``index``, in that order, unaugmented, in batches."""
        index = index.to(self.images.device)
        return [
            (self.images.index_select(0, part).float().div_(255), self.labels.index_select(0, part))
            for part in index.split(batch_size)
        ]


class FolderSplit:
    """A torchvision-style dataset of (float image tensor in [0, 1], label) read by a DataLoader;
    ``repadded(crop_padding)``, for a split read with random crops, is the same split with that padding."""

    def __init__(
        self,
        dataset: Dataset,
        device: torch.device,
        num_workers: int,
        repadded: Callable[[int], Dataset] | None = None,
    ):
        self.dataset = dataset
        self.device = device
        self.num_workers = num_workers
        self.repadded = repadded

    def with_crop_padding(self, crop_padding: int) -> FolderSplit:
        """The same split with its random crops padded by ``crop_padding`` (itself if it crops none)."""
        if self.repadded is None:
            return self
        return FolderSplit(self.repadded(crop_padding), self.device, self.num_workers, self.repadded)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def num_batches(self, batch_size: int, train: bool, shard: Shard = WHOLE) -> int:
        full, rest = divmod(self.num_samples, batch_size)
        return full + (rest > 0 and not (train and rest < shard.smallest_training_batch))

    def batches(
        self, batch_size: int, *, train: bool = False, seed: int | None = None, shard: Shard = WHOLE
    ) -> Iterator[Batch]:
        """As ``TensorSplit.batches``; the shuffled order is that of a DataLoader with ``shuffle`` and a
        generator seeded with ``seed``, each batch cut to ``shard``'s part."""
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
        rest = self.num_samples % batch_size
        drop_last = train and 0 < rest < shard.smallest_training_batch
        order = RandomSampler(self.dataset, generator=generator) if train else range(self.num_samples)
        parts = _Parts(BatchSampler(order, batch_size, drop_last), shard if train else WHOLE)
        yield from self._load(parts, generator)

    def test_batches(self, batch_size: int, shard: Shard = WHOLE) -> Iterator[tuple[int, Batch]]:
        """(index, batch) of the evaluation's batches in order, those ``shard`` owns."""
        owned = [i for i in range(self.num_batches(batch_size, train=False)) if shard.owns(i)]
        batches = [list(range(i * batch_size, min((i + 1) * batch_size, self.num_samples))) for i in owned]
        yield from zip(owned, self._load(batches, None), strict=True)

    def _load(self, batch_sampler, generator: torch.Generator | None) -> Iterator[Batch]:
        loader = DataLoader(
            self.dataset,
            batch_sampler=batch_sampler,
            generator=generator,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for images, labels in loader:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def take(self, index: torch.Tensor, batch_size: int) -> list[Batch]:
        """The samples at ``index``, in that order, through the split's transforms, in batches."""
        loader = DataLoader(Subset(self.dataset, index.tolist()), batch_size=batch_size, num_workers=self.num_workers)
        return [(images.to(self.device), labels.to(self.device)) for images, labels in loader]


class _Parts:
    """A batch sampler yielding ``shard``'s part of each batch of ``batches``."""

    def __init__(self, batches: BatchSampler, shard: Shard):
        self.batches, self.shard = batches, shard

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[self.shard.part(len(batch))]

    def __len__(self) -> int:
        return len(self.batches)


def calibration_batches(split, batches: int, batch_size: int, seed: int) -> list[Batch]:
    """``batches`` batches of distinct training samples drawn with ``seed`` (all samples if fewer)."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(split.num_samples, generator=generator)[: batches * batch_size]
    return split.take(index, batch_size)


class GivenSplit:
    """Images in [0, 1] handed over from Python (the API): a pair of tensors (images, labels), cut into
    batches of the size asked (shuffled from the epoch's seed for training, never augmented), or any
    sized, re-iterable source of (images, labels) batches such as a ``DataLoader``, whose own batches,
    shuffling and transforms are kept. Batches move to ``device``; uint8 images are scaled to [0, 1], and
    an image outside [0, 1] raises ``DataError`` (attacks bound pixels, so normalisation belongs in the
    model). One process reads it all."""

    def __init__(self, data, device: torch.device):
        self.device = device
        self.tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self.loader = None
        if isinstance(data, (tuple, list)) and len(data) == 2 and all(torch.is_tensor(t) for t in data):
            images, labels = data
            if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
                raise DataError(
                    f"expected images (N, C, H, W) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}"
                )
            self.tensors, self.num_samples = (images, labels), len(labels)
        elif hasattr(getattr(data, "dataset", None), "__len__"):
            self.loader, self.num_samples = data, len(data.dataset)
        else:
            raise DataError(
                "the data must be a pair of tensors (images, labels) or a DataLoader over a sized dataset, "
                f"got {type(data).__name__}"
            )

    def _raw_batches(self, batch_size: int, order: torch.Tensor | None = None) -> Iterator[Batch]:
        if self.tensors is None:
            return iter(self.loader)
        images, labels = self.tensors
        if order is None:
            return zip(images.split(batch_size), labels.split(batch_size), strict=True)
        return ((images[part], labels[part]) for part in order.split(batch_size))

    def _moved(self, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        return self._pixels(images.to(self.device)), labels.to(self.device).long()

    def test_batches(self, batch_size: int, shard: Shard = WHOLE) -> Iterator[tuple[int, Batch]]:
        """(index, batch) in order, those ``shard`` owns."""
        for index, (images, labels) in enumerate(self._raw_batches(batch_size)):
            if shard.owns(index):
                yield index, self._moved(images, labels)

    def batches(self, batch_size: int, *, train: bool = False, seed: int | None = None, shard: Shard = WHOLE):
        """A training epoch's batches (tensors: shuffled from ``seed``)."""
        if shard.size > 1:
            raise DataError("data handed over from Python trains in one process (use gkp run for several)")
        order = None
        if train and self.tensors is not None:
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(seed or 0))
        return (self._moved(images, labels) for images, labels in self._raw_batches(batch_size, order))

    def num_batches(self, batch_size: int, train: bool = False, shard: Shard = WHOLE) -> int:
        return len(self.loader) if self.tensors is None else math.ceil(self.num_samples / batch_size)

    def all_batches(self, batch_size: int) -> list[Batch]:
        return [batch for _, batch in self.test_batches(batch_size)]

    @staticmethod
    def _pixels(images: torch.Tensor) -> torch.Tensor:
        images = images.float().div(255) if images.dtype == torch.uint8 else images.float()
        if images.numel() and (images.min() < 0 or images.max() > 1):
            raise DataError(
                f"images must be pixels in [0, 1], got values from {images.min().item():.3g} to "
                f"{images.max().item():.3g}: give them unnormalised and pass the normalisation as mean=/std="
            )
        return images
