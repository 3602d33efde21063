"""Generated, learnable images for tests and benchmarks (``data.image_size``, ``train_size``, ``test_size``)."""

from __future__ import annotations

from gkp.entries.datasets.arrays import loader_of, read_synthetic, reads_root
from gkp.foundation.contracts import Dataset

ENTRY = Dataset(
    "synthetic",
    loader_of(
        lambda cfg, classes: read_synthetic(
            classes or 10, cfg.image_size or 32, cfg.train_size or 512, cfg.test_size or 256
        )
    ),
    "generated, learnable images for tests and benchmarks (data.image_size, train_size, test_size)",
    reads_root,
    lambda cfg: (round((cfg.train_size or 512) * (1 - cfg.val_fraction)), cfg.test_size or 256),
)
