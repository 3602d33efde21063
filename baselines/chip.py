"""CHIP: "CHIP: CHannel Independence-based Pruning for Compact Neural Networks" (Sui, Yin, Xie, Phan,
Zonouz, Yuan; NeurIPS 2021).

Criterion: for each calibration image, A is the conv's post-ReLU feature maps (``relu(bn(conv(x)))``,
model in eval mode, no gradients) flattened to a C x hw matrix; channel j's independence is
CI(j) = ||A||_* - ||A with row j zeroed||_*, the drop of the nuclear norm when the channel is removed.
Filter j scores the mean of CI(j) over all calibration images; each prunable conv keeps its
highest-scoring filters, ties going to the lower index. Layers are scored independently, one-shot, on
the unpruned model.

Computation: float64 singular values (``torch.linalg.svdvals``) of A and of its C row-deleted copies,
all in one batched call per chunk of images (chunks bound the copies to ``STACK_ELEMENTS`` float64
entries); where hw > C, A is first replaced by the C x C factor R^T of A^T = QR, which has the same
singular values, as do its row-deleted copies. The authors' code rounds the stored maps to 4 decimals
before computing CI; here they are used as computed. The mean is over images rather than a mean of
per-batch means (the same for equal batches).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from baselines.activations import feature_maps
from baselines.filter_method import filter_method
from gkp.foundation.contracts import PruningContext

STACK_ELEMENTS = 2**24  # float64 entries of row-deleted copies per SVD call: 128 MiB


@dataclass(frozen=True)
class ChipParams:
    """CHIP has no parameters beyond the budget and the calibration images (``prune.calibration``)."""


def channel_independence(maps: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) feature maps -> (N, C) float64 CI: each image's nuclear-norm drop per deleted row."""
    matrices = maps.flatten(2).double()
    _, channels, positions = matrices.shape
    if positions > channels:
        # A = R^T Q^T with Q's columns orthonormal (QR of A^T), and zeroing a row of A zeroes the same row
        # of R^T: every nuclear norm below is that of a C x C matrix instead of a C x hw one.
        matrices = torch.linalg.qr(matrices.transpose(1, 2)).R.transpose(1, 2)
        positions = channels
    # Copy j (< C) of an image has row j zeroed; copy C is the image's matrix itself.
    row_masks = torch.cat([1 - torch.eye(channels), torch.ones(1, channels)]).to(matrices)
    chunk = max(1, STACK_ELEMENTS // ((channels + 1) * channels * positions))
    drops = []
    with one_cpu_thread(matrices.device):
        for part in matrices.split(chunk):
            norms = torch.linalg.svdvals(part[:, None] * row_masks[:, :, None]).sum(dim=-1)
            drops.append(norms[:, -1:] - norms[:, :-1])
    return torch.cat(drops)


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Batched small SVDs on the CPU run 2-3x faster on one thread than on two (measured: 16 x 65
    64x64 float64 matrices, 0.44 s against 1.36 s), so CHIP runs them single-threaded there."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def score(model: nn.Module, groups, params: ChipParams, context: PruningContext) -> dict[str, np.ndarray]:
    batches = context.calibration_batches()
    ci_sums: dict[str, torch.Tensor] = {}

    def accumulate(name: str, maps: torch.Tensor) -> None:
        ci = channel_independence(maps).sum(dim=0)
        ci_sums[name] = ci_sums[name] + ci if name in ci_sums else ci

    feature_maps(model, groups, batches, accumulate)
    images = sum(len(x) for x, _ in batches)
    return {name: (ci_sums[name] / images).cpu().numpy() for name in groups}


ENTRY = filter_method(
    "chip",
    ChipParams,
    score,
    "CHIP: channel independence, nuclear-norm drop (Sui et al., NeurIPS 2021)",
    calibrated=True,
)
