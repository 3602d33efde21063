"""Datasets and on-device batching: sizes, augmentation semantics, seeded order, splits and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gkp.application.catalog import load_data
from gkp.application.config import DataConfig
from gkp.foundation.errors import DataError
from gkp.mechanisms.data.augment import random_crop, random_flip
from gkp.mechanisms.data.bundle import hold_out
from gkp.mechanisms.data.splits import TensorSplit

CPU = torch.device("cpu")


def test_digits_is_embedded_resized_and_split_the_same_way_every_time():
    bundle = load_data(DataConfig(name="digits"), CPU)
    assert (bundle.train.num_samples, bundle.test.num_samples, bundle.num_classes) == (1437, 360, 10)
    assert bundle.train.images.shape[1:] == (3, 32, 32) and bundle.train.images.dtype == torch.uint8
    again = load_data(DataConfig(name="digits"), CPU)
    assert torch.equal(bundle.test.images, again.test.images)
    assert sorted(bundle.test.labels.bincount().tolist())[0] >= 35  # stratified: every digit present


def test_random_crop_takes_a_window_of_the_zero_padded_image():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    crops = random_crop(images, 2, torch.Generator().manual_seed(0))
    padded = F.pad(images, (2, 2, 2, 2))
    windows = {(dy, dx) for dy in range(5) for dx in range(5)}
    for crop, source in zip(crops, padded, strict=True):
        assert any(torch.equal(crop, source[:, dy : dy + 8, dx : dx + 8]) for dy, dx in windows)
    assert not torch.equal(crops, images)


def test_random_flip_mirrors_about_half():
    images = torch.randint(0, 256, (400, 3, 4, 4), dtype=torch.uint8)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(a, b.flip(2)) and not torch.equal(a, b) for a, b in zip(flipped, images, strict=True)]
    unchanged = [torch.equal(a, b) for a, b in zip(flipped, images, strict=True)]
    assert all(m or u for m, u in zip(mirrored, unchanged, strict=True)) and 150 < sum(mirrored) < 250


def test_training_batches_are_a_seeded_permutation():
    split = TensorSplit(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10), "crop_flip")
    first = torch.cat([y for _, y in split.batches(4, train=True, seed=1)])
    assert sorted(first.tolist()) == list(range(10))
    assert torch.equal(first, torch.cat([y for _, y in split.batches(4, train=True, seed=1)]))
    assert not torch.equal(first, torch.cat([y for _, y in split.batches(4, train=True, seed=2)]))
    assert torch.equal(torch.cat([y for _, y in split.batches(4)]), torch.arange(10))
    x, _ = next(split.batches(4, train=True, seed=1))
    assert x.dtype == torch.float32 and x.shape == (4, 3, 4, 4)


def test_a_single_image_last_batch_is_dropped_only_in_training():
    split = TensorSplit(torch.zeros(9, 3, 4, 4, dtype=torch.uint8), torch.arange(9))
    assert [len(y) for _, y in split.batches(4, train=True)] == [4, 4]
    assert [len(y) for _, y in split.batches(4)] == [4, 4, 1]
    assert split.num_batches(4, train=True) == 2 and split.num_batches(4, train=False) == 3


def test_validation_split_is_held_out_and_seeded():
    train, val = hold_out(100, 0.2, seed=0)
    assert len(val) == 20 and len(train) == 80 and not set(train) & set(val)
    assert np.array_equal(val, hold_out(100, 0.2, seed=0)[1])
    bundle = load_data(DataConfig(name="digits", val_fraction=0.1), CPU)
    assert bundle.val.num_samples == 144 and bundle.train.num_samples == 1437 - 144


def test_subsets_and_synthetic_sizes():
    bundle = load_data(DataConfig(name="synthetic", image_size=16, train_size=64, test_size=32), CPU, num_classes=5)
    assert (bundle.train.num_samples, bundle.test.num_samples, bundle.num_classes) == (64, 32, 5)
    assert bundle.train.images.shape[-1] == 16
    digits = load_data(DataConfig(name="digits", train_size=100, test_size=50), CPU)
    assert (digits.train.num_samples, digits.test.num_samples) == (100, 50)


def _write_npz(path, images, labels):
    np.savez(path, images=images, labels=labels)
    return str(path)


def test_npz_sets_and_their_errors(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    path = _write_npz(tmp_path / "ok.npz", images, np.arange(20) % 4)
    bundle = load_data(DataConfig(name="npz", path=path), CPU)
    assert bundle.train is None and bundle.test.num_samples == 20 and bundle.num_classes == 4
    assert torch.equal(bundle.test.images[3], torch.from_numpy(images[3]).permute(2, 0, 1))
    with pytest.raises(DataError, match=r"data.path: the npz file .*missing.npz does not exist"):
        load_data(DataConfig(name="npz", path=str(tmp_path / "missing.npz")), CPU)
    np.savez(tmp_path / "keys.npz", x=images)
    with pytest.raises(DataError, match="must hold arrays 'images' and 'labels', it holds x"):
        load_data(DataConfig(name="npz", path=str(tmp_path / "keys.npz")), CPU)
    bad = _write_npz(tmp_path / "float.npz", images.astype(np.float32), np.arange(20))
    with pytest.raises(DataError, match="'images' must be uint8"):
        load_data(DataConfig(name="npz", path=bad), CPU)
    short = _write_npz(tmp_path / "short.npz", images, np.arange(5))
    with pytest.raises(DataError, match="'labels' must be 20 non-negative integers"):
        load_data(DataConfig(name="npz", path=short), CPU)


def test_a_failed_cifar_download_is_one_error_naming_the_folder_and_the_fix(tmp_path, monkeypatch):
    """The real download code, pointed at a port of 127.0.0.1 where nothing listens."""
    import socket

    from torchvision import datasets

    with socket.socket() as probe:  # a free port, closed again: the connection is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(datasets.CIFAR10, "url", f"http://127.0.0.1:{port}/cifar-10-python.tar.gz")
    with pytest.raises(DataError, match=r"cifar10: the download into .*cifar-10-batches-py failed \(.*refused"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path), download=True), CPU)


def test_missing_cifar_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"cifar10 was not found .* in .*cifar-10-batches-py.*data.download: true"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)), CPU)


def _png_tree(root, classes=("a", "b"), per_class=3, side=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_image_folders_load_in_the_imagenet_layout(tmp_path):
    _png_tree(tmp_path)
    bundle = load_data(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16, num_workers=0), CPU)
    assert (bundle.num_classes, bundle.train.num_samples, bundle.test.num_samples) == (2, 6, 6)
    x, y = next(bundle.test.batches(4))
    assert x.shape == (4, 3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1 and y.tolist() == [0, 0, 0, 1]
    # a training section's own crop padding rebuilds the training split's crops; the test split crops none
    padded = bundle.train.with_crop_padding(8)
    crop = next(t for t in padded.dataset.dataset.transform.transforms if type(t).__name__ == "RandomCrop")
    assert crop.padding == 8 and padded.num_samples == 6 and bundle.test.with_crop_padding(8) is bundle.test


def test_an_image_folders_digest_changes_with_its_images_and_is_kept_while_no_folder_changes(tmp_path):
    """The manifest (every image's name and size) is read again only when a folder's time moved: adding,
    removing or renaming an image changes the digest; an image rewritten in place does not until its
    folder is touched (the documented limit, docs/running.md)."""
    import os

    from gkp.entries.datasets.folders import manifest_digest

    _png_tree(tmp_path)
    first = manifest_digest(str(tmp_path))
    (tmp_path / "val" / "a" / "0.png").rename(tmp_path / "val" / "a" / "9.png")
    renamed = manifest_digest(str(tmp_path))
    assert renamed != first
    (tmp_path / "train" / "b" / "1.png").write_bytes(b"another image, another size")
    assert manifest_digest(str(tmp_path)) == renamed  # in place: its folder's time did not move
    later = (tmp_path / "train" / "b").stat().st_mtime_ns + 10**9
    os.utime(tmp_path / "train" / "b", ns=(later, later))
    assert manifest_digest(str(tmp_path)) not in (first, renamed)


def test_tiny_imagenet_validation_annotations_are_read(tmp_path):
    _png_tree(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "val")
    (tmp_path / "val" / "images").mkdir(parents=True)
    shutil.copy(tmp_path / "train" / "b" / "0.png", tmp_path / "val" / "images" / "val_0.png")
    (tmp_path / "val" / "val_annotations.txt").write_text("val_0.png\tb\t0\t0\t12\t12\n")
    bundle = load_data(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16, num_workers=0), CPU)
    assert bundle.test.num_samples == 1 and next(bundle.test.batches(4))[1].tolist() == [1]


def test_missing_image_folder_explains_the_layout(tmp_path):
    with pytest.raises(DataError, match=r"imagefolder: .*train does not exist. data.root must hold train/ and val/"):
        load_data(DataConfig(name="imagefolder", root=str(tmp_path)), CPU)


def test_a_size_above_the_images_there_are_takes_them_all_and_says_so(caplog):
    with caplog.at_level("WARNING"):
        bundle = load_data(DataConfig(name="digits", train_size=5000, test_size=None), CPU)
    assert bundle.train.num_samples == 1437
    assert "data.train_size: 5000 asked, but there are 1437; all 1437 are used" in caplog.text
