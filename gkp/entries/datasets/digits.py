"""The handwritten digits that ship inside scikit-learn, resized to 32x32: runs anywhere with no download."""

from __future__ import annotations

from gkp.entries.datasets.arrays import loader_of, read_digits, reads_root, sized
from gkp.foundation.contracts import Dataset

ENTRY = Dataset(
    "digits",
    loader_of(lambda cfg, classes: read_digits()),
    "scikit-learn's handwritten digits (1,797 images, 10 classes) at 32x32: no download",
    reads_root,
    sized(1437, 360),  # read_digits' fixed split
)
