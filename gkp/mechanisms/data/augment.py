"""Training augmentation as batched tensor ops on the device (no per-image Python work).

``random_crop`` pads a uint8 batch with zeros and takes one random crop per image (torchvision's
``RandomCrop(size, padding)``); ``random_flip`` mirrors a random half horizontally. Both draw from an
explicit generator, so an epoch's augmentation is fixed by its seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``H x W`` crop of each zero-padded image of an (N, C, H, W) batch."""
    n, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=images.device)
    rows = offsets[0, :, None] + torch.arange(height, device=images.device)
    cols = offsets[1, :, None] + torch.arange(width, device=images.device)
    batch = torch.arange(n, device=images.device)[:, None, None]
    channels_last = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return channels_last.permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image of an (N, C, H, W) batch left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def default_padding(side: int) -> int:
    """The crops' zero border where a config sets none: side/8, 4 at CIFAR's 32x32 (the usual CIFAR recipe)."""
    return max(1, side // 8)


def augment(images: torch.Tensor, kind: str, generator: torch.Generator, padding: int | None = None) -> torch.Tensor:
    """Apply ``kind`` (crop_flip, crop, flip or none) to a uint8 batch; crops pad by ``padding`` (default
    ``default_padding``)."""
    if kind in ("crop_flip", "crop"):
        images = random_crop(images, default_padding(images.shape[-1]) if padding is None else padding, generator)
    if kind in ("crop_flip", "flip"):
        images = random_flip(images, generator)
    return images
