"""Seeds: one experiment seed, from which every random stream (epochs, attacks) is derived by name."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(seed: int, *names: object) -> int:
    """A 63-bit seed for the stream ``names`` (e.g. ("train", epoch)) of experiment ``seed``."""
    text = "/".join(str(part) for part in (seed, *names))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
