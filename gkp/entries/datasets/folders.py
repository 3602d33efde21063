"""Image-folder datasets (Tiny-ImageNet, ImageNet) read with torchvision transforms.

Expected layout under ``data.root``: ``train/<class>/*.JPEG`` and either ``val/<class>/*.JPEG`` or, as
Tiny-ImageNet ships, ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (file, class, ...).
Side <= 64 (Tiny-ImageNet): train = Resize + RandomCrop(pad side/8) + flip, test = Resize.
Larger (ImageNet, 224): train = RandomResizedCrop + flip, test = Resize(side * 8/7) + CenterCrop.
Images stay in [0, 1]; normalisation is inside the model.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from gkp.entries.datasets.arrays import sized
from gkp.foundation.errors import DataError, first_line, relative_path_note
from gkp.foundation.files import cached_digest
from gkp.mechanisms.data.bundle import DataBundle, subset, training_indices
from gkp.mechanisms.data.splits import FolderSplit
from gkp.mechanisms.data.statistics import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def read_image(path: str):
    """An image file as torchvision reads it, or a DataError naming the file (a truncated or foreign file
    among a million would otherwise end a run mid-epoch with PIL's error alone)."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except OSError as error:  # PIL's UnidentifiedImageError included
        raise DataError(
            f"imagefolder: {path} cannot be read as an image ({first_line(error)}); replace or remove it"
        ) from None


def image_folder(folder: Path, transform):
    """torchvision's ImageFolder over ``folder`` (one subfolder per class), reading with ``read_image``."""
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(folder), transform=transform, loader=read_image)
    except FileNotFoundError as error:  # no class folder, or a class folder without images
        raise DataError(
            f"imagefolder: {folder} must hold one subfolder of images per class ({first_line(error)}); see "
            "docs/models-and-data.md, 'Data layout'"
        ) from None


class AnnotatedFolder(Dataset):
    """Tiny-ImageNet's validation folder: images listed with their class in an annotation file."""

    def __init__(self, folder: Path, class_to_idx: dict[str, int], transform):
        self.loader = read_image
        self.transform = transform
        self.samples = []
        for line in (folder / "val_annotations.txt").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in class_to_idx:
                self.samples.append((folder / "images" / parts[0], class_to_idx[parts[1]]))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        return self.transform(self.loader(str(path))), label


def transforms_for(image_size: int, train: bool, crop_padding: int | None = None):
    """torchvision's transforms: small images (Tiny-ImageNet) padded crops and flips, as CIFAR's; larger
    ones ImageNet's random resized crops (``crop_padding`` is then unused)."""
    from torchvision import transforms as T

    if image_size <= 64:
        steps = [T.Resize(image_size), T.CenterCrop(image_size)]
        if train:
            padding = image_size // 8 if crop_padding is None else crop_padding
            steps += [T.RandomCrop(image_size, padding=padding), T.RandomHorizontalFlip()]
    elif train:
        steps = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(round(image_size * 8 / 7)), T.CenterCrop(image_size)]
    return T.Compose([*steps, T.ToTensor()])


def read_image_folders(root: str, image_size: int, crop_padding: int | None = None) -> tuple[Dataset, Dataset, int]:
    train_dir, val_dir = Path(root) / "train", Path(root) / "val"
    for folder in (train_dir, val_dir):
        if not folder.is_dir():
            raise DataError(
                f"imagefolder: {folder.resolve()} does not exist{relative_path_note(folder)}. "
                "data.root must hold train/ and "
                "val/, one subfolder per class (Tiny-ImageNet's val/images + val_annotations.txt "
                "also works); see docs/models-and-data.md, 'Data layout'"
            )
    train = image_folder(train_dir, transforms_for(image_size, train=True, crop_padding=crop_padding))
    if (val_dir / "val_annotations.txt").is_file():
        test: Dataset = AnnotatedFolder(val_dir, train.class_to_idx, transforms_for(image_size, train=False))
    else:
        test = image_folder(val_dir, transforms_for(image_size, train=False))
        if test.classes != train.classes:
            raise DataError(f"imagefolder: {val_dir} and {train_dir} hold different class folders")
    if len(test) == 0:
        raise DataError(f"imagefolder: no validation images found in {val_dir}")
    return train, test, len(train.classes)


def bundle_from_folders(cfg, device: torch.device, num_classes: int | None = None) -> DataBundle:
    """The splits of the image folders under ``cfg.root`` (a ``DataConfig``), streamed to ``device``; the
    class count is the folders' (``num_classes`` is for generated data)."""
    size = cfg.image_size or 224
    train_set, test_set, num_classes = read_image_folders(cfg.root, size, cfg.crop_padding)
    train_idx, val_idx = training_indices(len(train_set), cfg)
    test_idx = subset(len(test_set), cfg.test_size, cfg, "test_size")
    val = None
    if len(val_idx):
        plain = image_folder(Path(train_set.root), transforms_for(size, train=False))
        val = FolderSplit(Subset(plain, val_idx.tolist()), device, cfg.num_workers)

    def repadded(crop_padding: int) -> Dataset:
        return Subset(image_folder(Path(train_set.root), transforms_for(size, True, crop_padding)), train_idx.tolist())

    return DataBundle(
        FolderSplit(Subset(train_set, train_idx.tolist()), device, cfg.num_workers, repadded),
        val,
        FolderSplit(Subset(test_set, test_idx.tolist()), device, cfg.num_workers),
        num_classes,
        size,
        IMAGENET_MEAN,
        IMAGENET_STD,
    )


# What image folders usually hold at their image size, for estimates before the folders exist here:
# Tiny-ImageNet (64x64: 100,000 + 10,000) and ImageNet-1k (224x224: 1,281,167 + 50,000).
USUAL_FOLDER_IMAGES = {64: (100_000, 10_000), 224: (1_281_167, 50_000)}


def folder_images(cfg) -> tuple[int, int] | None:
    """(training, test) images: counted where the folders exist, else what the usual dataset of the image
    size holds."""
    root = Path(cfg.root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, test = (sum(len(files) for _, _, files in os.walk(root / part)) for part in ("train", "val"))
        return sized(train, test)(cfg)
    usual = USUAL_FOLDER_IMAGES.get(cfg.image_size or 224)
    return sized(*usual)(cfg) if usual else None


def _walk(root: Path) -> tuple[list[Path], list[os.DirEntry]]:
    """Every folder under ``root`` (itself included) and every file in them, without reading a file."""
    folders, files, todo = [], [], [root]
    while todo:
        folder = todo.pop()
        folders.append(folder)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    todo.append(Path(entry.path))
                else:
                    files.append(entry)
    return folders, files


def manifest_digest(root: str) -> str:
    """A digest of the image folders' manifest (every file's path under ``root``'s train/ and val/, and its
    size). Computed once, then read from the digest cache while no folder's modification time changed
    (adding, removing or renaming an image changes its folder's)."""
    base = Path(root).resolve()
    parts = [base / "train", base / "val"]
    folders = [folder for part in parts if part.is_dir() for folder in _walk(part)[0]]
    stamp = hashlib.sha256("".join(f"{f}:{f.stat().st_mtime_ns}\n" for f in sorted(folders)).encode()).hexdigest()

    def manifest() -> str:
        lines = sorted(
            f"{Path(entry.path).relative_to(base)} {entry.stat().st_size}"
            for part in parts
            if part.is_dir()
            for entry in _walk(part)[1]
        )
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    return cached_digest(f"manifest of {base}", stamp, manifest)
